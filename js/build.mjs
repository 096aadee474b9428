// Bundle the views into one ES module inside the Python package (no CDN at run time).
import { build } from "esbuild";
import { mkdirSync } from "node:fs";

const outdir = new URL("../workbench/static/", import.meta.url).pathname;
mkdirSync(outdir, { recursive: true });
await build({
  entryPoints: ["src/index.ts"],
  outfile: `${outdir}widget.js`,
  bundle: true,
  format: "esm",
  target: "es2020",
  minify: !process.env.WB_DEBUG,
  sourcemap: false,
  define: { "define.amd": "false" },
  legalComments: "none",
  logLevel: "warning",
});
console.log("built", `${outdir}widget.js`);
