"use strict";
// Drives Node's faktory-worker for kaffi's benchmark suite; bench/peers.py runs it with
// NODE_PATH pointing at the bench-only install in bench/.env/node and FAKTORY_URL set.
//
//   node faktory_worker.js OP N QUEUE
//
// OP push        N jobs, one `await client.job("noop").push()` at a time
//    push_bulk   N jobs with client.pushBulk in batches of 1000
//    push_async  N jobs with 50 pushes in flight (a pool of 50 connections)
//    work        a worker at concurrency 20 on QUEUE until SIGTERM (N is ignored)
//
// The enqueue operations print one JSON line {"jobs": N, "seconds": S, "cpu": C} (C: this
// process's CPU seconds); the clocks start after the client is connected, as they do for
// every client in the suite.
const faktory = require("faktory-worker");

const op = process.argv[2];
const n = Number(process.argv[3] || "0");
const queue = process.argv[4] || "default";

function startClock() {
  return { wall: process.hrtime.bigint(), cpu: process.cpuUsage() };
}

function report(jobs, started) {
  const seconds = Number(process.hrtime.bigint() - started.wall) / 1e9;
  const used = process.cpuUsage(started.cpu);
  const cpu = (used.user + used.system) / 1e6;
  process.stdout.write(JSON.stringify({ jobs, seconds, cpu }) + "\n");
}

function newJob(client) {
  const job = client.job("noop");
  job.queue = queue;
  return job;
}

async function push() {
  const client = await faktory.connect();
  try {
    const started = startClock();
    for (let i = 0; i < n; i++) {
      await newJob(client).push();
    }
    report(n, started);
  } finally {
    await client.close();
  }
}

async function pushBulk() {
  const client = await faktory.connect();
  try {
    const started = startClock();
    for (let done = 0; done < n; done += 1000) {
      const batch = [];
      for (let i = done; i < Math.min(n, done + 1000); i++) {
        batch.push(newJob(client));
      }
      const rejected = await client.pushBulk(batch);
      if (Object.keys(rejected).length > 0) {
        throw new Error("the server refused jobs: " + JSON.stringify(rejected).slice(0, 200));
      }
    }
    report(n, started);
  } finally {
    await client.close();
  }
}

async function pushAsync() {
  const lanes = 50;
  const client = await faktory.connect({ poolSize: lanes });
  try {
    const started = startClock();
    const lane = async (count) => {
      for (let i = 0; i < count; i++) {
        await newJob(client).push();
      }
    };
    const work = [];
    for (let l = 0; l < lanes; l++) {
      work.push(lane(Math.floor(n / lanes) + (l < n % lanes ? 1 : 0)));
    }
    await Promise.all(work);
    report(n, started);
  } finally {
    await client.close();
  }
}

async function work() {
  faktory.register("noop", async () => {});
  // The worker traps SIGTERM and SIGINT itself and stops cleanly.
  await faktory.work({ concurrency: 20, queues: [queue] });
}

const ops = { push, push_bulk: pushBulk, push_async: pushAsync, work };

if (!(op in ops)) {
  process.stderr.write("unknown operation " + op + "; expected one of " + Object.keys(ops) + "\n");
  process.exit(2);
}
ops[op]().catch((err) => {
  process.stderr.write(String((err && err.stack) || err) + "\n");
  process.exit(1);
});
