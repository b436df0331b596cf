// Builds the app into dist/: hashed, minified bundles under dist/assets/ and an index.html that
// names them. The gateway serves dist/ (hashed files cached for a year, index.html never).
// index.html is written last and atomically, so a gateway serving during a rebuild never sees a
// page naming files that are not there yet.
import * as esbuild from "esbuild";
import { copyFileSync, mkdirSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";

const out = "dist";
const assets = join(out, "assets");
mkdirSync(assets, { recursive: true });

const result = await esbuild.build({
  entryPoints: { app: "src/main.js" },
  bundle: true,
  minify: true,
  sourcemap: false,
  format: "esm",
  target: ["chrome110", "firefox115", "safari16"],
  outdir: assets,
  entryNames: "[name]-[hash]",
  assetNames: "[name]-[hash]",
  metafile: true,
  logLevel: "warning",
  legalComments: "none",
});

const built = Object.keys(result.metafile.outputs).map((path) => basename(path));
const script = built.find((name) => name.endsWith(".js"));
const style = built.find((name) => name.endsWith(".css"));

const page = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>leadmesh</title>
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
${style ? `<link rel="stylesheet" href="/assets/${style}">` : ""}
<script type="module" src="/assets/${script}"></script>
</head>
<body>
<div id="app"></div>
<noscript>leadmesh needs JavaScript in the browser. The REST API is documented at <a href="/docs">/docs</a>.</noscript>
</body>
</html>
`;
copyFileSync("public/favicon.svg", join(out, "favicon.svg"));
writeFileSync(join(out, "index.html.new"), page);
renameSync(join(out, "index.html.new"), join(out, "index.html"));

// Files of earlier builds go once they are an hour old (a page loaded before the rebuild may
// still ask for them).
const keep = new Set(built);
for (const name of readdirSync(assets)) {
  const path = join(assets, name);
  if (!keep.has(name) && Date.now() - statSync(path).mtimeMs > 3600_000) rmSync(path);
}
console.log(`web app built: dist/index.html, ${built.map((n) => "assets/" + n).join(", ")}`);
