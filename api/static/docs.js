// GET /docs: Swagger UI (served from the package) on this API's /openapi.json.
// No validator badge: it would send the description to validator.swagger.io.
(function () {
  "use strict";
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    tryItOutEnabled: false,
  });
})();
