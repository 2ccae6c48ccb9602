"""Figure 5: SMS segments per reminder over the demo register, in French and in English, with and without GSM-7
normalisation.

Every row of `ops/rappel_demo/data/sample_register.csv` (the demo's register) is rendered as each of the three
reminders in both languages (whatever the row's own language, so the two languages are compared on the same
names, vaccines, dates and clinics), through the language's `LanguagePack` with `gsm7_normalise` forced on and
off. The segment cap is lifted (max_segments = 10) so that the texts compared are identical but for the
normalisation: with the default cap of SMS_MAX_SEGMENTS the renderer would shorten a long text (dropping the
clinic) and hide part of the difference.
"""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import date
from typing import Any

from core.texts import load_language
from core.timing import ReminderType
from rappel_demo.register import SAMPLE_REGISTER_PATH, read_register_csv

UNCAPPED = 10


def measure_segments(languages: tuple[str, ...] = ("fr", "en")) -> dict[str, Any]:
    """Average segments (and UCS-2 share) per reminder for each language, normalised and raw."""
    rows = read_register_csv(SAMPLE_REGISTER_PATH)
    out: dict[str, Any] = {"register": SAMPLE_REGISTER_PATH.name, "rows": len(rows), "languages": {}}
    for language in languages:
        pack = load_language(language)
        figures: dict[str, Any] = {"language_pack_normalises": pack.gsm7_normalise}
        for label, normalise in (("gsm7_normalised", True), ("raw", False)):
            variant = pack.model_copy(update={"gsm7_normalise": normalise})
            segments: list[int] = []
            encodings: Counter[str] = Counter()
            for row in rows:
                for reminder_type in ReminderType:
                    rendered = variant.render(
                        reminder_type=reminder_type.value,
                        name=row["display_name"],
                        vaccine=row["vaccine"],
                        dose=int(row["dose"]),
                        due_date=date.fromisoformat(row["due_date"]),
                        clinic=row["clinic"] or None,
                        max_segments=UNCAPPED,
                    )
                    segments.append(rendered.segments)
                    encodings[rendered.encoding] += 1
            figures[label] = {
                "reminders": len(segments),
                "mean_segments": statistics.fmean(segments),
                "max_segments": max(segments),
                "ucs2_share": encodings["UCS-2"] / len(segments),
            }
        figures["saving"] = 1 - figures["gsm7_normalised"]["mean_segments"] / figures["raw"]["mean_segments"]
        out["languages"][language] = figures
    return out
