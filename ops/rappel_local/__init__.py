"""The embedded stack: AWS on moto, the Orange simulator, `rappel simulate`, its invariants. Not Lambda code."""
