// Package reply writes the coreapp's HTTP answers on fasthttp in the API's
// shapes: a JSON body, or the On-Premises error object of internal/apierror.
// Every stage that answers a request (api, accept, media, contacts, slots)
// writes through it, so an error looks the same whoever sends it.
package reply

import (
	"encoding/json"

	"github.com/valyala/fasthttp"

	"github.com/multiconnect/multiconnect/internal/apierror"
)

// JSON answers status with v encoded as JSON.
func JSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, _ := json.Marshal(v)
	ctx.SetContentType("application/json")
	ctx.SetStatusCode(status)
	ctx.SetBody(b)
}

// Error answers the API error code with details, under the code's status.
func Error(ctx *fasthttp.RequestCtx, code int, details string) {
	ctx.SetContentType("application/json")
	ctx.SetStatusCode(apierror.Status(code))
	ctx.SetBody(apierror.JSON(code, details))
}
