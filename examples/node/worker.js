// An eventq worker: LISTEN, pull, ack / ignore / retry with the lease guard, graceful stop.
//
//   DATABASE_URL=postgresql://app@localhost/shop node worker.js CONSUMER
'use strict';
const { Client } = require('pg');

const BATCH = 10;

class Failed extends Error {}
class NothingToDo extends Error {}

// The application's work. Throw Failed to retry, NothingToDo to ignore.
async function handle(subject, payload) {
  if (payload.fail) throw new Failed(`cannot handle ${subject} #${payload.n}`);
  if (payload.skip) throw new NothingToDo('skipped by the demo');
}

async function main() {
  const consumer = process.argv[2];
  const client = new Client({ connectionString: process.env.DATABASE_URL });
  await client.connect();

  let stopping = false;
  let wake = () => {};
  const stop = () => { stopping = true; wake(); };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  client.on('notification', () => wake());
  await client.query(`LISTEN ${client.escapeIdentifier(`eventq_${consumer}`)}`);
  console.log(`worker for ${consumer} started`);

  while (!stopping) {
    const { rows: tasks } = await client.query(
      'SELECT task_id, subject, payload, attempt FROM eventq.pull($1, $2)', [consumer, BATCH]);
    if (tasks.length === 0) {
      // woken by a notification, or after a second (without the background worker)
      await new Promise((resolve) => { wake = resolve; setTimeout(resolve, 1000); });
      continue;
    }
    const done = [];
    const attempts = [];
    for (const t of tasks) {
      try {
        await handle(t.subject, t.payload);
        done.push(t.task_id);
        attempts.push(t.attempt);
      } catch (e) {
        if (e instanceof NothingToDo) {
          await client.query('SELECT eventq.ignore($1, $2, $3, attempt => $4)',
            [consumer, t.task_id, e.message, t.attempt]);
        } else {
          await client.query('SELECT eventq.retry($1, $2, $3, attempt => $4)',
            [consumer, t.task_id, String(e.message), t.attempt]);
        }
      }
    }
    if (done.length > 0) {
      await client.query('SELECT eventq.ack($1, $2::bigint[], $3::int[])', [consumer, done, attempts]);
    }
  }
  await client.end();
  console.log(`worker for ${consumer} stopped`);
}

main().catch((e) => { console.error(e); process.exit(1); });
