// Build a JavaScript sluice plugin folder into a component:
//   node plugin-sdk/js/build.mjs PLUGIN_DIR [OUT.wasm]
// PLUGIN_DIR holds handler.js (`export function handle(event)`) and any
// modules it imports; OUT defaults to PLUGIN_DIR/<folder name>.wasm.
// `import ... from "sluice"` resolves to this SDK. Uses componentize-js from
// .tools/js (installed by scripts/setup.sh) or $COMPONENTIZE_JS_DIR (a folder
// holding node_modules/@bytecodealliance/componentize-js).
import { cp, mkdtemp, readdir, readFile, rename, rm, writeFile, chmod } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const sdk = dirname(fileURLToPath(import.meta.url));
const root = resolve(sdk, "../..");
const [dirArg, outArg] = process.argv.slice(2);
if (!dirArg || !existsSync(join(dirArg, "handler.js"))) {
  console.error("usage: node build.mjs PLUGIN_DIR [OUT.wasm]  (PLUGIN_DIR must contain handler.js)");
  process.exit(2);
}
const dir = resolve(dirArg);
const out = resolve(outArg ?? join(dir, `${basename(dir)}.wasm`));
const toolDir = process.env.COMPONENTIZE_JS_DIR ?? join(root, ".tools/js");
const toolEntry = join(toolDir, "node_modules/@bytecodealliance/componentize-js/src/componentize.js");
if (!existsSync(toolEntry)) {
  console.error(`componentize-js not found at ${toolEntry}: run \`. scripts/setup.sh\` in ${root} (installs it into .tools/js) or set COMPONENTIZE_JS_DIR`);
  process.exit(1);
}
const { componentize } = await import(pathToFileURL(toolEntry).href);

// Stage the plugin's modules next to the SDK's, with the bare "sluice"
// specifier pointing at the SDK, and an entry module exporting the contract.
const stage = await mkdtemp(join(tmpdir(), "sluice-js-"));
try {
  for (const file of ["sluice.js", "contract.js", "json.js"]) {
    await cp(join(sdk, file), join(stage, file));
  }
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile() || !/\.(m?js)$/.test(entry.name) || entry.parentPath.includes("node_modules")) continue;
    const from = join(entry.parentPath, entry.name);
    const rel = from.slice(dir.length + 1);
    const depth = rel.split("/").length - 1;
    const sdkPath = depth === 0 ? "./sluice.js" : `${"../".repeat(depth)}sluice.js`;
    const source = (await readFile(from, "utf8")).replace(
      /(\bfrom\s*|\bimport\s*\(?\s*)(["'])sluice\2/g,
      (_, head, q) => `${head}${q}${sdkPath}${q}`,
    );
    await cp(from, join(stage, rel)); // creates parent folders
    await writeFile(join(stage, rel), source);
  }
  await writeFile(
    join(stage, "__sluice_entry.js"),
    [
      'import { handle } from "./handler.js";',
      'import { dispatch } from "./sluice.js";',
      'if (typeof handle !== "function") throw new Error("handler.js must export `function handle(event)`");',
      "export const handler = {",
      "  handle(event) {",
      "    let failure;",
      "    try {",
      "      failure = dispatch(handle, event);",
      "    } catch (e) {",
      "      // Not a contract error: print the stack, then throw a value the",
      "      // bindings cannot lower, which traps with this text in its message.",
      "      console.error(`uncaught exception in handle(): ${e}\\n${(e && e.stack) || \"\"}`);",
      "      throw `uncaught exception in handle(): ${e}`;",
      "    }",
      "    if (failure !== undefined) throw failure;",
      "  },",
      "};",
      "",
    ].join("\n"),
  );
  const { component } = await componentize({
    sourcePath: join(stage, "__sluice_entry.js"),
    witPath: join(root, "wit/0.2.0"),
    worldName: "consumer",
    disableFeatures: ["http", "fetch-event"],
  });
  const tmp = `${out}.tmp-${process.pid}`;
  await writeFile(tmp, component);
  await chmod(tmp, 0o644);
  await rename(tmp, out);
  console.log(out);
} finally {
  await rm(stage, { recursive: true, force: true });
}
