"""Push N jobs with the PyPI ``pyfaktory`` package and drain them with its client.

Usage: python pypi_pyfaktory.py tcp://127.0.0.1:PORT N   (prints a JSON summary)
"""

import json
import sys

from pyfaktory import Client, Job, Producer


def main() -> None:
    url, total = sys.argv[1], int(sys.argv[2])
    with Client(faktory_url=url, role="producer") as client:
        producer = Producer(client=client)
        for i in range(total):
            assert producer.push(Job(jobtype="compat.add", args=(i, i), queue="compat-pyfaktory"))
        rejected = producer.push_bulk(
            [Job(jobtype="compat.add", args=(0, 0), queue="compat-pyfaktory")]
        )
    done = total_sum = 0
    with Client(faktory_url=url, role="both", worker_id="compat-pyfaktory-1") as client:
        while done < total + 1:
            job = client._fetch(["compat-pyfaktory"])
            if job is None:
                break
            total_sum += sum(job["args"])
            client._ack(job["jid"])
            done += 1
        info = client.info()
    print(
        json.dumps(
            {
                "done": done,
                "sum": total_sum,
                "rejected": rejected,
                "queued": info["faktory"]["queues"]["compat-pyfaktory"],
            }
        )
    )


main()
