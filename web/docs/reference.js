// The API reference at /docs: Swagger UI (swagger-ui-dist, copied here by
// vite.config.ts) over the OpenAPI 3.1 document the server generates from
// its .proto files. An external script, so the page needs no inline code
// under its Content-Security-Policy (self only).
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  // Try-it-out calls go to this origin with the key given under Authorize.
  persistAuthorization: false,
  validatorUrl: null,
});
