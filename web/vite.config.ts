import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

// The gateway serves the build from the Python package (src/lockgate/admin/static/), so the
// console needs nothing from the network at run time: every dependency is bundled here.
export default defineConfig({
  base: "/",
  build: {
    outDir: fileURLToPath(new URL("../src/lockgate/admin/static", import.meta.url)),
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    chunkSizeWarningLimit: 1200,
  },
  oxc: {
    jsx: { runtime: "automatic", importSource: "preact" },
  },
  server: {
    // `npm run dev` against a gateway's admin listener: LOCKGATE_ADMIN=https://127.0.0.1:8443
    proxy: process.env.LOCKGATE_ADMIN
      ? Object.fromEntries(
          ["/api", "/auth"].map((p) => [p, { target: process.env.LOCKGATE_ADMIN, secure: false }]),
        )
      : undefined,
  },
});
