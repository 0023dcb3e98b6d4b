// puppeteer-pdf: Express + headless Chromium (Debian's). The browser is launched before the
// server listens; GET /pdf renders /page.html (served by this same server) to a PDF.
const express = require("express");
const puppeteer = require("puppeteer-core");

const port = parseInt(process.env.FC_SERVER_PORT || "9000", 10);
const app = express();
let browser;

app.get("/page.html", (req, res) => {
  const who = String(req.query.name || "Pronto").replace(/[^\w .-]/g, "");
  const rows = Array.from({ length: 40 }, (_, i) => `<tr><td>${i + 1}</td><td>${(i + 1) ** 2}</td></tr>`).join("");
  res.type("html").send(`<!doctype html><html><head><meta charset="utf-8"><title>Invoice</title>
<style>body{font-family:"Noto Sans",sans-serif;margin:2cm}h1{color:#246}td{border:1px solid #999;padding:2px 8px}</style>
</head><body><h1>Report for ${who}</h1><p>Rendered by headless Chromium inside the function.</p>
<table><tr><th>n</th><th>n²</th></tr>${rows}</table></body></html>`);
});

app.get("/pdf", async (req, res) => {
  const page = await browser.newPage();
  try {
    const name = encodeURIComponent(String(req.query.name || "Pronto"));
    await page.goto(`http://127.0.0.1:${port}/page.html?name=${name}`, { waitUntil: "load" });
    const pdf = await page.pdf({ format: "A4", printBackground: true });
    res.type("application/pdf").send(Buffer.from(pdf));
  } catch (e) {
    res.status(500).send(String(e));
  } finally {
    await page.close();
  }
});

(async () => {
  browser = await puppeteer.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  app.listen(port, "0.0.0.0", () => console.log(`listening on ${port}`));
})().catch((e) => { console.error(e); process.exit(1); });
