"""One queue, two languages: Node's faktory-worker pushes a job that kaffi works, and
kaffi pushes a job that a Node worker runs.

Run it with ``python examples/cross_language.py``. It needs ``node`` and ``npm`` on the
PATH and access to the npm registry: it installs ``faktory-worker`` into a temporary
directory (never into this repository) and removes it afterwards. Without them it says
so, prints ``skipped:`` and exits 0.

Both sides only agree on the jobtype and a JSON array of arguments: that is the whole
contract Faktory asks for.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _server import faktory_url, stopwatch

from kaffi import App

FAKTORY_WORKER_VERSION = "4.7.1"
say = stopwatch()

NODE_PRODUCER = """
const faktory = require("faktory-worker");
(async () => {
  const client = await faktory.connect({ url: process.env.FAKTORY_URL });
  const jid = await client.job("add_numbers", 19, 23).push();
  console.log(`node pushed add_numbers(19, 23) as ${jid}`);
  await client.close();
})().catch((error) => { console.error(error); process.exit(1); });
"""

NODE_WORKER = """
const faktory = require("faktory-worker");
let finish;
const finished = new Promise((resolve) => { finish = resolve; });
faktory.register("greet_from_python", async (name, language) => {
  const shown = [name, language].map((value) => JSON.stringify(value)).join(", ");
  console.log(`node worker ran greet_from_python(${shown})`);
  finish();
});
(async () => {
  await faktory.work({ url: process.env.FAKTORY_URL, queues: ["polyglot"], concurrency: 1 });
  await finished;
  await faktory.stop();  // waits for the job to be ACKed
  process.exit(0);
})().catch((error) => { console.error(error); process.exit(1); });
"""


def skip(reason: str) -> None:
    """Say why the example cannot run here and exit 0."""
    print(f"skipped: {reason}")
    raise SystemExit(0)


def install_faktory_worker(directory: Path) -> None:
    """Install Node's faktory-worker into ``directory`` (never into this repository)."""
    npm = shutil.which("npm")
    assert npm is not None
    say(f"installing faktory-worker {FAKTORY_WORKER_VERSION} into a temporary directory")
    try:
        subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                f"faktory-worker@{FAKTORY_WORKER_VERSION}",
            ],
            cwd=directory,
            check=True,
            capture_output=True,
            timeout=240,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        output = getattr(exc, "stderr", b"") or b""
        skip(f"npm could not install faktory-worker: {output.decode(errors='replace')[-300:]}")


def run_node(directory: Path, script: str, url: str) -> None:
    """Run a Node script with faktory-worker against ``url``; exit if it fails."""
    node = shutil.which("node")
    assert node is not None
    path = directory / "script.js"
    path.write_text(script, encoding="utf-8")
    result = subprocess.run(
        [node, str(path)],
        cwd=directory,
        env={**os.environ, "FAKTORY_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    for line in result.stdout.splitlines():
        say(line)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"node exited with status {result.returncode}")


def main() -> None:
    """Node pushes and kaffi works, then kaffi pushes and Node works."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        skip("node and npm are needed for this example")
    with tempfile.TemporaryDirectory(prefix="kaffi-node-") as tmp, faktory_url() as url:
        directory = Path(tmp)
        install_faktory_worker(directory)
        app = App(url)
        results: list[int] = []

        @app.task
        def add_numbers(x: int, y: int) -> None:
            results.append(x + y)
            say(f"kaffi worker ran add_numbers({x}, {y}) = {x + y}")

        # Node -> Python
        run_node(directory, NODE_PRODUCER, url)
        app.worker(queues=["default"], burst=True).work()
        if results != [42]:
            raise SystemExit(f"expected kaffi to compute [42], got {results}")

        # Python -> Node: any jobtype can be pushed by name, even one with no Python task.
        job = app.client.job("greet_from_python", "Ada", "Python")
        job.queue = "polyglot"
        say(f"kaffi pushed greet_from_python('Ada', 'Python') as {job.push()}")
        app.close()
        run_node(directory, NODE_WORKER, url)
        say("both directions worked")


if __name__ == "__main__":
    main()
