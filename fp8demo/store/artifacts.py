"""A finished run's files (weights, config, vocabulary): in the home's runs/<id>/ folder, in a
folder every host mounts (FP8DEMO_ARTIFACTS), or, with a database every host shares and no such
folder, copied into the database and fetched once by each host that needs them."""

import os
import tempfile
from pathlib import Path

from fp8demo.database import StoreError, upsert

# The largest artifact file the database keeps (PostgreSQL's limit for one value is 1 GB, and
# both ends hold a value in memory): larger models need FP8DEMO_ARTIFACTS.
MAX_ARTIFACT_BYTES = 256 * 2**20
# Written into a run's local folder once its files are in the database (or came from it).
ARTIFACTS_SHARED = ".in-store"


class Artifacts:
    """Where a run's files are (a part of Store; Store sets home and artifacts)."""

    def run_dir(self, run_id: int) -> Path:
        """The folder of a run's files, on this host. With a PostgreSQL store (and no
        FP8DEMO_ARTIFACTS) the files live in the database: the first call on a host that did
        not train the run writes them here."""
        if self.artifacts is not None:
            return self.artifacts / str(int(run_id))
        folder = self._local_run_dir(run_id)
        if self._artifacts_in_database() and not (folder / ARTIFACTS_SHARED).exists():
            self._fetch_artifacts(int(run_id), folder)
        return folder

    def _local_run_dir(self, run_id: int) -> Path:
        return self.home / "runs" / str(int(run_id))

    def _artifacts_in_database(self) -> bool:
        """Kept in the database: every host reaches it, and no folder is shared."""
        return self.db.shared_between_hosts and self.artifacts is None

    def share_artifacts(self, run_id: int):
        """Copy a run's files into the database, where every host finds them (PostgreSQL
        store only; a shared folder or SQLite needs nothing). StoreError, copying nothing, for
        a file over MAX_ARTIFACT_BYTES."""
        if not self._artifacts_in_database():
            return
        folder = self._local_run_dir(run_id)
        files = sorted(  # not locks (training.PTQ_LOCK) nor hidden files (the marker)
            f
            for f in folder.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix != ".lock"
        )
        for f in files:
            size = f.stat().st_size
            if size > MAX_ARTIFACT_BYTES:
                raise StoreError(
                    f"Run {run_id}'s {f.name} has {size:,} bytes, more than the "
                    f"{MAX_ARTIFACT_BYTES:,} the database store keeps per file: set "
                    "FP8DEMO_ARTIFACTS to a folder every host mounts to keep larger models."
                )
        sql = upsert("artifacts", ("run_id", "name", "bytes"), key=("run_id", "name"))
        with self._transaction() as conn:
            for f in files:
                conn.execute(sql, (int(run_id), f.name, f.read_bytes()))
        (folder / ARTIFACTS_SHARED).touch()

    def _fetch_artifacts(self, run_id: int, folder: Path):
        """Write the run's files from the database into `folder` (nothing when it has none);
        each file appears whole (a temporary name, then a rename), the marker last."""
        rows = self._execute("SELECT name, bytes FROM artifacts WHERE run_id=?", (run_id,))
        rows = rows.fetchall()
        if not rows:
            return
        folder.mkdir(parents=True, exist_ok=True)
        for name, payload in rows:
            handle, partial = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
            with os.fdopen(handle, "wb") as f:
                f.write(payload)
            os.replace(partial, folder / name)
        (folder / ARTIFACTS_SHARED).touch()
