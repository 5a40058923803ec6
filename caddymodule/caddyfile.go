package caddymodule

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("multiconnect", parseCaddyfile)
	// The gateway ends the chain the way reverse_proxy does; it sits just
	// before it so encode, request_body, headers and the like still wrap it.
	httpcaddyfile.RegisterDirectiveOrder("multiconnect", httpcaddyfile.Before, "reverse_proxy")
}

// parseCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	multiconnect {
//	    database {
//	        hostname <host>      # default {env.WA_DB_HOSTNAME}
//	        port     <port>      # default {env.WA_DB_PORT}
//	        username <user>      # default {env.WA_DB_USERNAME}
//	        password <password>  # default {env.WA_DB_PASSWORD}
//	        name     <database>  # default {env.MC_DB_NAME} or multiconnect
//	    }
//	    refresh_interval <duration>
//	    retry_wait       <duration>
//	    response_timeout <duration>
//	    max_body_size    <size>
//	    token_ttl        <duration>
//	    token_cache      <duration>
//	    token_grace      <duration>
//	    token_lookup_rate <per second>
//	    api_key          <key>
//	    login_failures   <count> [<window>]
//	    bcrypt_cost      <cost>
//	    health_timeout   <duration>
//	    forget_after     <duration>
//	    cloudapi_app_secret      <secret>  # default {env.MC_CLOUDAPI_APP_SECRET}
//	    cloudapi_verify_token    <token>   # default {env.MC_CLOUDAPI_VERIFY_TOKEN}
//	    cloudapi_phone_number_id <id>      # default {env.MC_CLOUDAPI_PHONE_NUMBER_ID}
//	    cloudapi_max_age         <duration> # default 192h
//	    reverse_proxy {
//	        # any reverse_proxy subdirective but upstreams, for example
//	        transport http {
//	            dial_timeout 1s
//	        }
//	    }
//	}
//
// Every setting is optional; `multiconnect` alone is a working gateway.
func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	g := new(Gateway)
	rp, err := g.unmarshal(h.Dispenser)
	if err != nil {
		return nil, err
	}
	if err := rp.FinalizeUnmarshalCaddyfile(h); err != nil {
		return nil, err
	}
	var warnings []caddyconfig.Warning
	g.ProxyRaw = caddyconfig.JSONModuleObject(rp, "handler", "reverse_proxy", &warnings)
	return g, nil
}

// UnmarshalCaddyfile implements caddyfile.Unmarshaler.
func (g *Gateway) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	rp, err := g.unmarshal(d)
	if err != nil {
		return err
	}
	g.ProxyRaw = caddyconfig.JSONModuleObject(rp, "handler", "reverse_proxy", nil)
	return nil
}

func (g *Gateway) unmarshal(d *caddyfile.Dispenser) (*reverseproxy.Handler, error) {
	d.Next() // the directive name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	rp := defaultProxy()
	for d.NextBlock(0) {
		switch key := d.Val(); key {
		case "database":
			if err := g.unmarshalDatabase(d); err != nil {
				return nil, err
			}
		case "refresh_interval", "retry_wait", "response_timeout", "token_ttl", "token_cache", "token_grace", "health_timeout", "forget_after", "cloudapi_max_age":
			v, err := oneArg(d)
			if err != nil {
				return nil, err
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return nil, d.Errf("%s: %v", key, err)
			}
			*map[string]*caddy.Duration{
				"refresh_interval": &g.RefreshInterval, "retry_wait": &g.RetryWait, "response_timeout": &g.ResponseTimeout, "token_ttl": &g.TokenTTL,
				"token_cache": &g.TokenCache, "token_grace": &g.TokenGrace, "health_timeout": &g.HealthTimeout,
				"forget_after": &g.ForgetAfter, "cloudapi_max_age": &g.CloudAPIMaxAge,
			}[key] = caddy.Duration(dur)
		case "max_body_size":
			v, err := oneArg(d)
			if err != nil {
				return nil, err
			}
			n, err := humanize.ParseBytes(v)
			if err != nil || n == 0 || n > 1<<40 {
				return nil, d.Errf("max_body_size: %q is not a size such as 1MiB", v)
			}
			g.MaxBodySize = int64(n)
		case "api_key", "cloudapi_app_secret", "cloudapi_verify_token", "cloudapi_phone_number_id":
			v, err := oneArg(d)
			if err != nil {
				return nil, err
			}
			*map[string]*string{
				"api_key": &g.APIKey, "cloudapi_app_secret": &g.CloudAPIAppSecret,
				"cloudapi_verify_token": &g.CloudAPIVerifyToken, "cloudapi_phone_number_id": &g.CloudAPIPhoneNumberID,
			}[key] = v
		case "login_failures":
			args := d.RemainingArgs()
			if len(args) < 1 || len(args) > 2 {
				return nil, d.ArgErr()
			}
			n, err := strconv.Atoi(args[0])
			if err != nil || n < 1 {
				return nil, d.Errf("login_failures: %q is not a positive count", args[0])
			}
			g.LoginFailures = n
			if len(args) == 2 {
				dur, err := caddy.ParseDuration(args[1])
				if err != nil {
					return nil, d.Errf("login_failures window: %v", err)
				}
				g.LoginWindow = caddy.Duration(dur)
			}
		case "token_lookup_rate":
			v, err := oneArg(d)
			if err != nil {
				return nil, err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n == 0 || n < -1 {
				return nil, d.Errf("token_lookup_rate: %q is not a positive rate per second (or -1 for no limit)", v)
			}
			g.TokenLookupRate = n
		case "bcrypt_cost":
			v, err := oneArg(d)
			if err != nil {
				return nil, err
			}
			n, err := strconv.Atoi(v)
			if err != nil {
				return nil, d.Errf("bcrypt_cost: %q is not a number", v)
			}
			g.BcryptCost = n
		case "reverse_proxy":
			rp = new(reverseproxy.Handler)
			if err := rp.UnmarshalCaddyfile(d.NewFromNextSegment()); err != nil {
				return nil, err
			}
			if len(rp.Upstreams) > 0 {
				return nil, d.Errf("the reverse_proxy inside multiconnect takes no upstreams: the shard map chooses them")
			}
			if rp.DynamicUpstreamsRaw == nil {
				rp.DynamicUpstreamsRaw = defaultProxy().DynamicUpstreamsRaw
			}
		default:
			return nil, d.Errf("unknown multiconnect setting %q", key)
		}
	}
	return rp, nil
}

// unmarshalDatabase reads a database block (the dispenser is on its name);
// the certificate manager takes the same block.
func (g *Gateway) unmarshalDatabase(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	if g.Database == nil {
		g.Database = new(DatabaseConfig)
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		field := map[string]*string{
			"hostname": &g.Database.Hostname, "port": &g.Database.Port, "username": &g.Database.Username,
			"password": &g.Database.Password, "name": &g.Database.Name,
		}[d.Val()]
		if field == nil {
			return d.Errf("unknown database setting %q (hostname, port, username, password, name)", d.Val())
		}
		if !d.NextArg() {
			return d.ArgErr()
		}
		*field = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

func oneArg(d *caddyfile.Dispenser) (string, error) {
	if !d.NextArg() {
		return "", d.ArgErr()
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.ArgErr()
	}
	return v, nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*Gateway)(nil)
)
