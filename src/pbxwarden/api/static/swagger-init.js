// Starts Swagger UI on /docs. A file of its own, not an inline script, so the page's
// CSP allows nothing but the files it loads. Settings as FastAPI's own page, plus no
// validator badge (it would fetch an image from validator.swagger.io).
"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
