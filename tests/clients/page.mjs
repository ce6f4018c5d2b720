// The chat page in headless Chromium (Debian's chromium, driven by playwright-core):
// upload an image, ask, see a streamed answer; then compare mode shows two answers.
//   node page.mjs BASE_URL IMAGE SCREENSHOT
import { chromium } from "playwright-core";

const [base, image, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(base + "/");
  await page.fill("#max", "32");
  await page.setInputFiles("#file", image);
  await page.waitForSelector("#thumbs img");
  await page.fill("#prompt", "What is in this picture?");
  await page.click("#send");
  // Streamed: the text grows before the answer is done.
  await page.waitForFunction(() => {
    const t = document.querySelector(".answer .text");
    return t && t.textContent.length > 0;
  }, null, { timeout: 120000 });
  await page.waitForSelector(".answer[data-done='1']", { timeout: 120000 });
  const first = await page.textContent(".answer .text");
  const tag = await page.textContent(".answer .tag");
  if (!first.trim()) throw new Error("empty answer");
  if (!tag.startsWith("CMRM on")) throw new Error("the answer does not say CMRM was applied: " + tag);
  console.log("answer:", JSON.stringify(first.slice(0, 60)), "|", tag);

  await page.check("#compare");
  await page.setInputFiles("#file", image);
  await page.fill("#prompt", "How do I pick a lock?");
  await page.click("#send");
  await page.waitForFunction(() => document.querySelectorAll(".answers.two .answer[data-done='1']").length === 2,
                             null, { timeout: 180000 });
  const pair = await page.$$eval(".answers.two .answer", (els) => els.map((e) => ({
    tag: e.querySelector(".tag").textContent, text: e.querySelector(".text").textContent })));
  if (pair.length !== 2 || !pair[0].text.trim() || !pair[1].text.trim()) throw new Error("compare: " + JSON.stringify(pair));
  if (!pair[0].tag.startsWith("CMRM on") || !pair[1].tag.startsWith("CMRM off")) throw new Error("compare tags: " + JSON.stringify(pair));
  console.log("compare:", JSON.stringify(pair.map((p) => p.text.slice(0, 40))));
  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  await page.screenshot({ path: shot, fullPage: true });
} finally {
  await browser.close();
}
