import { readFileSync } from "node:fs";
import { defineConfig, type Plugin } from "vite";

// apiReference writes the API reference page served at /docs (web/docs.go)
// into dist/docs: its own page and script (docs/) and the built files of
// Swagger UI from node_modules/swagger-ui-dist (the version package.json
// pins), without their source-map comments (the maps are not shipped).
function apiReference(): Plugin {
  const files: Array<[string, string]> = [
    ["docs/index.html", "index.html"],
    ["docs/reference.js", "reference.js"],
    ["node_modules/swagger-ui-dist/swagger-ui-bundle.js", "swagger-ui-bundle.js"],
    ["node_modules/swagger-ui-dist/swagger-ui.css", "swagger-ui.css"],
    ["node_modules/swagger-ui-dist/LICENSE", "LICENSE"],
  ];
  return {
    name: "kgents-api-reference",
    apply: "build",
    generateBundle() {
      for (const [from, to] of files) {
        const text = readFileSync(new URL(from, import.meta.url), "utf8").replace(/\n?\/[/*]# sourceMappingURL=\S+(\s*\*\/)?\s*$/, "\n");
        this.emitFile({ type: "asset", fileName: "docs/" + to, source: text });
      }
    },
  };
}

// The build is committed (dist/) and embedded by the Go package in this
// directory, so it must be reproducible: content-hashed names, no
// timestamps, no source maps pointing at local paths.
export default defineConfig({
  base: "/console/",
  plugins: [apiReference()],
  oxc: {
    jsx: { runtime: "automatic", importSource: "preact" },
  },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    sourcemap: false,
    target: "es2022",
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
    chunkSizeWarningLimit: 200,
    rollupOptions: {
      output: {
        entryFileNames: "assets/[name]-[hash].js",
        chunkFileNames: "assets/[name]-[hash].js",
        assetFileNames: "assets/[name]-[hash][extname]",
      },
    },
  },
});
