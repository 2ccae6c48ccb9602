"""The operator CLI, `rappel`: commands against a deployed stack or the embedded one. Never shipped to Lambda."""
