"""Rappel's core: the rules, the store and the providers; the handlers and the operator's commands call into it."""

import logging
import zoneinfo

# Every zone from the tzdata package pinned with the functions (layers/dependencies), never the machine's own
# database: zoneinfo would read /usr/share/zoneinfo first, which on Lambda's Amazon Linux (and any machine) is
# neither the rules we test nor updated with our release. Here, before any zone is read.
zoneinfo.reset_tzpath(to=())
zoneinfo.ZoneInfo.clear_cache()

# Libraries log request lines and bodies at DEBUG (urllib3 a Kannel URL with its password, botocore items and
# secrets) through the runtime's root handler, past the masking formatter: kept at WARNING whatever the function's
# log level (ApplicationLogLevel DEBUG, when troubleshooting).
for _library in ("urllib3", "requests", "botocore", "boto3", "pynamodb"):
    logging.getLogger(_library).setLevel(logging.WARNING)
