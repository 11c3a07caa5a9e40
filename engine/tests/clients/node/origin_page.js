// Opens a page in the system Chromium (headless, driven by playwright-core: no browser
// download) and prints what the page recorded once it says it is done.
// Usage: node origin_page.js http://127.0.0.1:PORT/ ; prints one JSON line, exits 0.
'use strict';
const { chromium } = require('playwright-core');

const url = process.argv[2];
const timer = setTimeout(() => {
  console.log('TIMEOUT');
  process.exit(2);
}, 60000);

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const page = await browser.newPage();
  await page.goto(url);
  await page.waitForFunction(() => window.done === true, null, { timeout: 30000 });
  console.log(JSON.stringify(await page.evaluate(() => window.result)));
  await browser.close();
  clearTimeout(timer);
})().catch((e) => {
  console.log(`FAIL ${e.stack || e}`);
  process.exit(1);
});
