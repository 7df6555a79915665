// Builds the console into crates/server/ui, where the server compiles it in: one bundled,
// minified script, the style sheet and the page. The output depends only on the sources and the
// locked tool versions, so a rebuild reproduces the committed files byte for byte.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "crates", "server", "ui");
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(here, "src", "main.ts")],
  outfile: join(out, "app.js"),
  bundle: true,
  minify: true,
  format: "iife",
  target: "es2022",
  legalComments: "none",
  charset: "utf8",
  logLevel: "warning",
});
for (const file of ["index.html", "app.css"]) {
  copyFileSync(join(here, "src", file), join(out, file));
}
