"""A release work dir belongs to one target: the Hub endpoint and org it publishes to (or the suite dir it imports
into).

The journal says which release revisions are done *for that target*; read against another one it would call every
revision done and publish nothing. So the first run writes `target.json` into the work dir, and a run with another
target is refused in one line naming both (use another --work-dir). A work dir from before this file existed is
bound to the target of its next run; the final check (release.verify) re-processes whatever that target lacks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from spectra_hf.errors import ConfigError

TARGET_FILE = "target.json"


def describe(target: dict[str, str]) -> str:
    if target.get("mode") == "import":
        return f"import into {target.get('suite_dir')}"
    return f"publish to {target.get('org')} at {target.get('endpoint')}"


def bind_work_dir(work_dir: Path, target: dict[str, str]) -> None:
    """Bind `work_dir` to `target` (written atomically), or refuse when it is bound to another one.

    Raises:
        ConfigError: the work dir was used for another target (or its target.json is unreadable).
    """
    path = work_dir / TARGET_FILE
    if path.is_file():
        try:
            bound = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"{path} is unreadable ({error}): remove it to bind the work dir again") from None
        if bound != target:
            raise ConfigError(
                f"--work-dir {work_dir} belongs to another target ({describe(bound)}), not {describe(target)}: "
                "its journal is about that target. Pass another --work-dir (or the same target to resume)"
            )
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{TARGET_FILE}.tmp-{os.getpid()}")
    staging.write_text(json.dumps(target, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(staging, path)
