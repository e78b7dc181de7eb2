"""Optimization workers on several machines sharing one PostgreSQL database: the molecule
ledger and its claims live beside the Optuna study, so that any number of `molvae optimize
--storage postgresql://...` processes share one budget, each with its own run folder.

The tests start a throwaway PostgreSQL server of their own (Debian's ``postgresql``
package: ``initdb`` and ``pg_ctl``), on a free localhost port, and stop it afterwards. Without
those binaries they skip, except under CI (``CI=true``), where ``.ci/run`` installs them and a
skip would hide a missing test.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from molvae.errors import MolvaeError


def _postgres_bin() -> Path | None:
    """The folder of ``initdb``/``pg_ctl``: on PATH, or Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("pg_ctl")
    if found and Path(found).resolve().with_name("initdb").exists():
        return Path(found).resolve().parent
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name, reverse=True):
        if (d / "pg_ctl").exists() and (d / "initdb").exists():
            return d
    return None


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}; CI must run this test (.ci/run installs Debian's postgresql)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the session: yields its base URL (no database)."""
    bindir = _postgres_bin()
    if bindir is None:
        _unavailable("PostgreSQL is not installed (no initdb/pg_ctl; apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401  (SQLAlchemy 2.1's driver for postgresql:// URLs)
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'molvae[postgres]')")
    root = Path(tempfile.mkdtemp(prefix="molvae-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the postgres user
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no 'postgres' user to run PostgreSQL as")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else \
            ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    data = root / "data"
    subprocess.run(prefix + [str(bindir / "initdb"), "-D", str(data), "--auth=trust", "--username=postgres",
                             "--no-sync", "--encoding=UTF8"], check=True, capture_output=True)
    port = _free_port()
    # fsync off: a throwaway server; max_connections: 3 workers' pools and Optuna's.
    options = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
               "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
    subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w",
                             "-t", "60", "-o", options, "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server, request):
    """A fresh, empty database on the session's server (one per test)."""
    import sqlalchemy as sa

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    engine = sa.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return f"{postgres_server}/{name}"


# ---------------------------------------------------------------------------- the ledger


COLUMNS = ["oracle_call", "smiles", "score", "feasible", "qed_raw", "trial", "batch", "worker", "seconds"]
EXTRA = {"trial": 0, "batch": 0, "worker": 0, "seconds": 0.0}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Both databases the ledger is tested on: SQLite (a file) and PostgreSQL (a server)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("pg_url")


def _open(url: str, path: Path | None = None, study: str = "run", columns=COLUMNS):
    from molvae.optimize.ledger_db import DbMoleculeLog

    return DbMoleculeLog(url, study, path, columns, ["score"])


def _scored(smiles: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"smiles": smiles, "score": [0.5] * len(smiles), "feasible": [True] * len(smiles),
                         "qed_raw": [float("nan")] * len(smiles)})


def test_claims_keep_two_machines_from_scoring_one_molecule(db_url, tmp_path, monkeypatch):
    monkeypatch.setenv("MOLVAE_LEDGER_LEASE", "1.5")
    a = _open(db_url, tmp_path / "a" / "molecules.csv")
    b = _open(db_url, tmp_path / "b" / "molecules.csv")
    with a.lock():
        a.claim(["CCO", "CCN"], [0, 1])
    time.sleep(2.0)  # longer than the lease: a's heartbeat keeps its claims alive
    with b.lock():
        assert set(b.read_claims()) == {"CCO", "CCN"}
        b.claim(["CCC"], [2])
    assert b.append(_scored(["CCC"]), EXTRA) == [1]
    assert a.append(_scored(["CCO"]), EXTRA) == [2]
    assert b.sync() == 1 and list(b.index) == ["CCC", "CCO"]

    a._beat.set()  # a is killed: its heartbeat stops and nobody drops its claim on CCN
    time.sleep(2.0)
    with b.lock():
        assert b.read_claims() == {}
        b.claim(["CCN"], [3])
    assert b.append(_scored(["CCN"]), EXTRA) == [3]
    # a was only paused (its lease lapsed): it wakes with CCN scored, which b recorded first
    assert a.append(_scored(["CCN"]), EXTRA) == []
    a.close()
    b.close()

    c = _open(db_url, tmp_path / "c" / "molecules.csv")  # a third run folder joins later
    for folder in "abc":
        rows = pd.read_csv(tmp_path / folder / "molecules.csv")
        assert list(rows["smiles"]) == ["CCC", "CCO", "CCN"], folder
        assert list(rows["oracle_call"]) == [1, 2, 3]
    assert c.frame()["smiles"].tolist() == ["CCC", "CCO", "CCN"]


def test_sync_brings_the_local_copy_up_to_date(db_url, tmp_path):
    a, b = _open(db_url, tmp_path / "molecules.csv"), _open(db_url)
    with b.lock():
        b.claim(["CCO"], [0])
    b.append(_scored(["CCO"]), EXTRA)
    b.close()
    assert a.sync() == 1  # the last sync of a run: nothing written after it
    assert list(pd.read_csv(tmp_path / "molecules.csv")["smiles"]) == ["CCO"]


def test_a_finished_worker_frees_its_claims_at_once(db_url, monkeypatch):
    monkeypatch.setenv("MOLVAE_LEDGER_LEASE", "600")
    a, b = _open(db_url), _open(db_url)
    with a.lock():
        a.claim(["CCO"], [0])
    with b.lock():
        assert set(b.read_claims()) == {"CCO"}
    a.close()  # e.g. its objective raised: it will not record CCO
    with b.lock():
        assert b.read_claims() == {}


def test_ledger_refuses_another_objective_under_the_same_study(db_url):
    _open(db_url)
    with pytest.raises(MolvaeError, match="another objective"):
        _open(db_url, columns=COLUMNS[:3] + ["docking_score"] + COLUMNS[3:])
    _open(db_url, study="other", columns=COLUMNS[:3] + ["docking_score"] + COLUMNS[3:])


def test_ledger_refuses_a_worker_with_another_model(db_url):
    from molvae.optimize.ledger_db import DbMoleculeLog

    DbMoleculeLog(db_url, "run", None, COLUMNS, ["score"], settings={"model": "abc", "bound": 3.0})
    DbMoleculeLog(db_url, "run", None, COLUMNS, ["score"], settings={"model": "abc", "bound": 3.0})
    with pytest.raises(MolvaeError, match="model: 'abc' there, 'def' here"):
        DbMoleculeLog(db_url, "run", None, COLUMNS, ["score"], settings={"model": "def", "bound": 3.0})


def test_a_folder_of_another_run_is_not_overwritten(db_url, tmp_path):
    path = tmp_path / "molecules.csv"
    path.write_text(",".join(COLUMNS) + "\n1,CCO,0.5,True,,0,0,0,0.1\n")
    before = path.read_text()
    with pytest.raises(MolvaeError, match="another run"):
        _open(db_url, path)
    assert path.read_text() == before


def test_run_folders_share_one_budget_through_a_database(tmp_path, monkeypatch):
    """optimize() with an RDB storage keeps its ledger in the database: a second run folder
    (another machine) continues the first one's budget instead of starting its own, and with
    workers=2 the forked workers share it too. SQLite here, so this runs without a server."""
    import molvae.optimize as opt
    from molvae.data import bundled
    from test_optimize import Counting, FakeVAE

    monkeypatch.setattr(opt.region, "PCA_MOLECULES", 400)
    fake = FakeVAE(bundled("train")[:300])
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    log_path = tmp_path / "scored.txt"
    first = opt.optimize(fake, Counting(log_path), budget=24, sampler="random", batch_size=8, storage=storage,
                         out_dir=tmp_path / "a" / "run", progress=False)
    second = opt.optimize(fake, Counting(log_path), budget=56, sampler="cmaes", batch_size=8, storage=storage,
                          out_dir=tmp_path / "b" / "run", workers=2, progress=False)
    scored = log_path.read_text().split()
    assert len(scored) == len(set(scored)) == 56          # one budget, nothing scored twice
    assert len(first) == 24 and len(second) == 56
    rows = pd.read_csv(tmp_path / "b" / "run" / "molecules.csv")
    assert list(rows["oracle_call"]) == list(range(1, 57)) and set(rows["smiles"]) == set(scored)
    assert set(rows["smiles"][:24]) == set(first["smiles"])
    assert len(set(rows["worker"][24:])) == 2             # the two forked workers, numbered by the ledger


def test_a_worker_waits_for_claims_on_the_rest_of_the_budget_until_its_time_limit(tmp_path, monkeypatch):
    import molvae.optimize as opt
    from molvae.data import bundled
    from molvae.optimize.ledger_db import DbMoleculeLog
    from test_optimize import Counting, FakeVAE

    monkeypatch.setattr(opt.region, "PCA_MOLECULES", 400)
    fake = FakeVAE(bundled("train")[:300])
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    opt.optimize(fake, Counting(), budget=8, sampler="random", batch_size=8, storage=storage,
                 out_dir=tmp_path / "a" / "run", progress=False)
    columns = list(pd.read_csv(tmp_path / "a" / "run" / "molecules.csv").columns)
    other = DbMoleculeLog(storage, "run", None, columns, ["score"])  # a live worker elsewhere
    with other.lock():
        other.claim([f"C{'C' * i}O" for i in range(8)], [])    # ... scoring the last 8 of 16
    started = time.time()
    table = opt.optimize(fake, Counting(), budget=16, sampler="random", batch_size=8, storage=storage,
                         out_dir=tmp_path / "b" / "run", time_limit=2, progress=False)
    assert table.attrs["summary"]["stop_reason"] == "time_limit" and len(table) == 8
    assert time.time() - started < 60
    other.close()


# ---------------------------------------------------------------------------- three machines


SCORER = '''
import os, time
from rdkit import Chem
from rdkit.Chem import QED

def score(smiles, log, delay=0.0):
    """QED, after appending "<pid> <smiles>" to the shared file ``log`` for every molecule:
    the real oracle calls, whoever makes them."""
    with open(log, "a") as fh:
        fh.write("".join(f"{os.getpid()} {s}\\n" for s in smiles))
    time.sleep(delay)  # an expensive oracle: workers are killed while scoring
    return [QED.qed(Chem.MolFromSmiles(s)) for s in smiles]
'''

# `molvae optimize` itself, with the search region fitted on 400 molecules instead of 5,000
# (the test process fits it once into the shared cache, so every worker reads the same one).
CLI = ("import sys, molvae.optimize.region as r; r.PCA_MOLECULES = 400; "
       "from molvae.cli import main; sys.exit(main(sys.argv[1:]))")


def _ledger_rows(url: str, study: str) -> pd.DataFrame:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        df = pd.read_sql(sa.text(
            "SELECT m.oracle_call, m.smiles, w.pid FROM molvae_molecules m "
            "JOIN molvae_ledgers l ON l.id = m.ledger_id JOIN molvae_workers w ON w.id = m.worker_id "
            "WHERE l.study = :s ORDER BY m.oracle_call"), conn, params={"s": study})
    engine.dispose()
    return df


def _oracle_calls(path: Path) -> list[tuple[int, str]]:
    if not path.exists():
        return []
    return [(int(p), s) for p, s in (line.split() for line in path.read_text().splitlines() if line)]


def test_three_workers_share_one_budget_through_postgres(pg_url, tmp_path):
    """Three `molvae optimize` processes, separate run folders, one study and one budget in
    PostgreSQL; one is killed with SIGKILL while scoring. The survivors finish the budget
    (taking over the dead worker's claims when its lease runs out), the killed one is re-run;
    no molecule is scored twice except the killed batch, nothing recorded is lost, and the
    oracle calls run 1..budget."""
    import optuna

    from molvae.model import load_model
    from molvae.optimize import fit_latent_pca

    budget, batch, lease = 96, 8, 5.0
    fit_latent_pca(load_model(device="cpu"), n_molecules=400)  # into the cache the workers read
    (tmp_path / "scorer.py").write_text(SCORER)
    scored_file = tmp_path / "scored.txt"
    objective = tmp_path / "objective.toml"
    objective.write_text(f'[[component]]\nproperty = "scorer.py:score"\n'
                         f'params = {{ log = "{scored_file}", delay = 0.4 }}\n')
    env = {**os.environ, "MOLVAE_LEDGER_LEASE": str(lease), "OMP_NUM_THREADS": "1", "MOLVAE_QUIET": "1",
           "MOLVAE_ALLOW_CODE": str(tmp_path / "scorer.py")}  # the objective file names our scorer

    def start(machine: str) -> subprocess.Popen:
        out = tmp_path / machine / "run"  # same folder name on every machine: same study name
        out.parent.mkdir(exist_ok=True)
        cmd = [sys.executable, "-c", CLI, "-q", "optimize", "--objective", str(objective),
               "--budget", str(budget), "--batch-size", str(batch), "--storage", pg_url, "--out", str(out),
               "--device", "cpu"]
        return subprocess.Popen(cmd, env=env, stdout=open(tmp_path / f"{machine}.log", "ab"),
                                stderr=subprocess.STDOUT, start_new_session=True)

    started = time.time()
    procs = {m: start(m) for m in ("a", "b", "c")}
    victim = procs["b"].pid
    # Kill b while it scores a batch, after it has recorded at least one: it holds claims then.
    deadline = time.time() + 300  # process start-up alone took 40 s on a loaded 2-core machine
    while time.time() < deadline:
        mine = sum(1 for pid, _ in _oracle_calls(scored_file) if pid == victim)
        rows = _ledger_rows(pg_url, "run") if mine else pd.DataFrame({"pid": []})
        recorded = int((rows["pid"] == victim).sum())
        if 0 < recorded < mine:
            break
        assert procs["b"].poll() is None, (tmp_path / "b.log").read_text()
        time.sleep(0.02)
    else:
        pytest.fail("worker b never recorded a batch: " + (tmp_path / "b.log").read_text()[-2000:])
    os.killpg(victim, signal.SIGKILL)
    procs["b"].wait()
    in_flight = mine - recorded
    # Re-run b once its lease has run out, while a and c may still run: it closes b's running
    # trials (orphans now) and must leave a's and c's alone.
    time.sleep(lease + 0.5)
    procs["b again"] = start("b")
    for m, proc in procs.items():
        if m != "b":
            assert proc.wait(timeout=120) == 0, (tmp_path / f"{m[0]}.log").read_text()[-3000:]
    elapsed = time.time() - started

    ledger = _ledger_rows(pg_url, "run")
    scored = _oracle_calls(scored_file)
    # Counts add up: the budget, numbered 1..budget, each molecule once.
    assert len(ledger) == budget and list(ledger["oracle_call"]) == list(range(1, budget + 1))
    assert ledger["smiles"].is_unique
    # No molecule scored twice: only the batch b was scoring when killed may be scored again.
    counts = Counter(s for _, s in scored)
    victim_batch = {s for pid, s in scored if pid == victim} - set(ledger["smiles"][ledger["pid"] == victim])
    assert len(victim_batch) == in_flight > 0
    twice = {s for s, n in counts.items() if n > 1}
    assert twice <= victim_batch and max(counts.values()) <= 2
    survivors = [s for pid, s in scored if pid != victim]
    assert len(survivors) == len(set(survivors))
    # None lost: every molecule a live worker scored is recorded, by the worker that scored it.
    assert set(survivors) <= set(ledger["smiles"])
    assert set(ledger["smiles"]) <= set(counts)
    assert set(ledger["pid"]) >= {procs["a"].pid, procs["c"].pid, victim}
    # Every run folder holds the whole shared ledger, the re-run one too.
    for m in ("a", "b", "c"):
        local = pd.read_csv(tmp_path / m / "run" / "molecules.csv")
        assert list(local["smiles"]) == list(ledger["smiles"]), m
        assert list(local["oracle_call"]) == list(range(1, budget + 1))
        summary = __import__("json").loads((tmp_path / m / "run" / "summary.json").read_text())
        assert summary["oracle_calls"] == budget and summary["stop_reason"] == "budget", m
    # The study: the killed worker's running trials were closed by its re-run.
    study = optuna.load_study(study_name="run", storage=pg_url)
    states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    assert "RUNNING" not in states and states["COMPLETE"] >= budget, states
    print(f"3 workers, {budget} molecules, one killed and re-run: {elapsed:.0f} s")
