// Push N jobs with Node's faktory-worker client, drain them with its worker, report JSON.
// Usage: NODE_PATH=<dir>/node_modules node node_faktory_worker.js tcp://127.0.0.1:PORT N
"use strict";
const faktory = require("faktory-worker");

async function main() {
  const url = process.argv[2];
  const total = Number(process.argv[3] || "50");
  const client = await faktory.connect({ url });
  for (let i = 0; i < total; i += 1) {
    await client.job("compat.add", i, i).push();
  }
  await client.push({ jobtype: "compat.fail", args: [], queue: "compat-node", retry: 0 });
  // The Node client's own tests read set sizes from INFO's tasks block: a scheduled job
  // shows in tasks.Scheduled.size, a failed job with retries left in tasks.Retries.size.
  const later = new Date(Date.now() + 3600 * 1000).toISOString();
  await client.push({ jobtype: "compat.later", args: [], queue: "compat-node", at: later });
  const scheduledSize = (await client.info()).faktory.tasks.Scheduled.size;

  let done = 0;
  let failed = 0;
  let sum = 0;
  let finish;
  const finished = new Promise((resolve) => { finish = resolve; });
  const check = () => { if (done === total && failed === 1) finish(); };
  faktory.register("compat.add", async (a, b) => { sum += a + b; done += 1; check(); });
  faktory.register("compat.fail", async () => {
    failed += 1;
    check();
    throw new Error("expected failure");
  });
  const worker = await faktory.work({ url, queues: ["default", "compat-node"], concurrency: 5 });
  const timer = setTimeout(() => { console.error("timed out"); process.exit(2); }, 40000);
  await finished;
  clearTimeout(timer);
  await worker.stop();
  await client.push({ jobtype: "compat.retry", args: [], queue: "compat-retry", retry: 3 });
  const fetched = await client.fetch("compat-retry");
  await client.fail(fetched.jid, new Error("retry me"));
  const tasks = (await client.info()).faktory.tasks;
  await client.close();
  const sizes = { scheduled: scheduledSize, retries: tasks.Retries.size };
  console.log(JSON.stringify({ done, failed, sum, sizes }));
}

main().catch((err) => { console.error(err); process.exit(1); });
