// Publishes COUNT demo events, each in the transaction that records the application's row.
//
//   DATABASE_URL=postgresql://app@localhost/shop node publish.js STREAM COUNT
'use strict';
const { Client } = require('pg');

async function main() {
  const [stream, count] = [process.argv[2], Number(process.argv[3])];
  const client = new Client({ connectionString: process.env.DATABASE_URL });
  await client.connect();
  await client.query('CREATE TABLE IF NOT EXISTS demo_orders (n int PRIMARY KEY)');
  for (let n = 1; n <= count; n++) {
    await client.query('BEGIN');
    try {
      await client.query('INSERT INTO demo_orders VALUES ($1) ON CONFLICT DO NOTHING', [n]);
      await client.query("SELECT eventq.publish($1, 'demo.created', $2, key => $3)",
        [stream, { n, fail: n % 10 === 0, skip: n % 7 === 0 }, `order-${n}`]);
      await client.query('COMMIT');
    } catch (e) {
      await client.query('ROLLBACK');
      throw e;
    }
  }
  await client.end();
  console.log(`published ${count} events to ${stream}`);
}

main().catch((e) => { console.error(e); process.exit(1); });
