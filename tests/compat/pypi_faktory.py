"""Push N jobs with the PyPI ``faktory`` package and drain them with its own connection.

Usage: python pypi_faktory.py tcp://127.0.0.1:PORT N   (prints a JSON summary)
"""

import json
import sys

import faktory
from faktory._proto import Connection


def main() -> None:
    url, total = sys.argv[1], int(sys.argv[2])
    with faktory.connection(url) as client:
        for i in range(total):
            assert client.queue("compat.add", args=(i, i), queue="compat-faktory", retry=1)
    conn = Connection(url, worker_id="compat-faktory-1")
    conn.connect(worker_id="compat-faktory-1")
    done = total_sum = 0
    while done < total:
        job = conn.fetch(["compat-faktory"])
        if job is None:
            break
        total_sum += sum(job["args"])
        conn.reply("ACK", {"jid": job["jid"]})
        assert next(conn.get_message()) == "OK"
        done += 1
    conn.reply("BEAT", {"wid": "compat-faktory-1"})
    beat = next(conn.get_message())
    conn.disconnect()
    print(json.dumps({"done": done, "sum": total_sum, "beat": beat}))


main()
