"""The work directory's record of the network it holds files for (``<work_dir>/network.json``).

Every file a search keeps in its work directory (supernet checkpoint, latency table and predictor, search path,
result) is only valid for one network. The record is written on the first run and checked on every later one,
before anything is measured, trained or profiled: a work directory of another network is refused by name. Each
file also carries its own identity and is checked when it is read (``compress.train.supernet.read_checkpoint``,
``compress.search.greedy.read_path_file``, ``compress.search.objectives.fit_latency_predictor``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compress.errors import CorruptFileError, NewerSchemaError, WorkDirMismatchError
from compress.io import save_json
from compress.space.digest import identity_differences, network_identity

RECORD_FILE = "network.json"
RECORD_SCHEMA = 1


def check_work_dir(work: str | Path, net: Any, owner: str) -> dict:
    """Refuse a work directory that holds the files of another network; record this network in a new one.

    Args:
        work: the work directory (it exists).
        net: the ``SlimmableNetwork`` the run works on.
        owner: the search's name ("autoslim", "dms"), for the record and the messages.

    Returns:
        The network's identity (``compress.space.digest.network_identity``), as recorded.

    Raises:
        WorkDirMismatchError: the record names another network (says what differs and what to do).
        CorruptFileError: the record is not readable JSON of the expected shape.
        NewerSchemaError: the record was written by a newer version of compress (it is kept).
        WriteError: the record could not be written.
    """
    path = Path(work) / RECORD_FILE
    ident = network_identity(net)
    if path.exists():
        try:
            doc = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            doc = exc
        if not isinstance(doc, dict) or not isinstance(doc.get("network"), dict):
            raise CorruptFileError(
                f"The work directory's record {str(path)!r} is not the JSON compress writes ({doc!r:.120}). Delete "
                "it (it is written again from the network, and every other file of the folder is checked on its "
                "own), or pass another work_dir.")
        schema = doc.get("schema")
        if isinstance(schema, int) and not isinstance(schema, bool) and schema > RECORD_SCHEMA:
            raise NewerSchemaError(
                f"The work directory's record {str(path)!r} was written by a newer version of compress (record "
                f"schema {schema}; this version reads {RECORD_SCHEMA}). Upgrade compress to use this work_dir; the "
                "files are kept. Or pass another work_dir.")
        saved = doc["network"]
        if saved.get("graph") != ident["graph"]:
            raise WorkDirMismatchError(
                f"The work_dir {str(Path(work))!r} holds the files of another network ({RECORD_FILE}: "
                f"{identity_differences(saved, ident)}; written by {doc.get('owner', '?')}). Pass another work_dir "
                f"for this network, or delete the folder's contents to start over with it.")
        return ident
    save_json({"schema": RECORD_SCHEMA, "owner": owner, "network": ident}, path)
    return ident


__all__ = ["RECORD_FILE", "RECORD_SCHEMA", "check_work_dir"]
