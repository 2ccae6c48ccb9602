"""Run one built Lambda handler on one event, the way the python3.11 runtime does; standard library only.

Started by `rappel invoke` as `python -I -S lambda_runtime.py REQUEST.json`, so the interpreter sees none of
the project's virtualenv: only the standard library, the function's code folder (Lambda's /var/task) and its
layers' python/ folders (/opt/python), in that order. A handler that imports something the build did not put
there fails here exactly as it would on Lambda.

REQUEST.json: {"code": DIR, "layers": [DIR...], "handler": "handlers.x.lambda_handler", "event": {...},
"function_name": str, "memory_mb": int, "timeout_seconds": int, "result": PATH}. The result file gets
{"response": ...} or Lambda's error shape {"errorType", "errorMessage", "stackTrace"}.
"""

import importlib
import json
import sys
import time
import traceback
import uuid


class LambdaContext:
    """The attributes and method of the runtime's context object that handlers and Powertools read."""

    def __init__(self, function_name: str, memory_mb: int, timeout_seconds: int) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as handle:
        request = json.load(handle)
    sys.path[:0] = [request["code"], *request["layers"]]
    module_name, _, function = request["handler"].rpartition(".")
    try:
        handler = getattr(importlib.import_module(module_name), function)
        context = LambdaContext(request["function_name"], request["memory_mb"], request["timeout_seconds"])
        result = {"response": handler(request["event"], context)}
    except Exception as exc:
        result = {
            "errorType": type(exc).__name__,
            "errorMessage": str(exc),
            "stackTrace": traceback.format_exception(exc),
        }
    with open(request["result"], "w", encoding="utf-8") as handle:
        json.dump(result, handle, default=str)


if __name__ == "__main__":
    main()
