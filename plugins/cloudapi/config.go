package cloudapi

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/delivery"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
)

// Config is the plugin's configuration, read from the environment the
// coreapp passes on (see FromEnv and the README's "Cloud API transport").
type Config struct {
	PhoneNumberID string // MC_CLOUDAPI_PHONE_NUMBER_ID
	AccessToken   string // MC_CLOUDAPI_ACCESS_TOKEN (secret)
	AppSecret     string // MC_CLOUDAPI_APP_SECRET (secret; the gateway's, read here only to refuse a half configuration)
	VerifyToken   string // MC_CLOUDAPI_VERIFY_TOKEN (secret; the gateway's)
	GraphVersion  string // MC_CLOUDAPI_GRAPH_VERSION, default v23.0
	BaseURL       string // MC_CLOUDAPI_BASE_URL, default https://graph.facebook.com
	// Delivery is the send engine's (MC_CLOUDAPI_THROUGHPUT,
	// MC_CLOUDAPI_UNKNOWN_OUTCOME and its waits, MC_CLOUDAPI_TOKEN_RETRY:
	// delivery.ConfigFromEnv).
	Delivery delivery.Config
	// MediaDir is the shared media directory (MC_MEDIA_DIR, default
	// /usr/local/wamedia, as the coreapp): media sent by our id are read
	// from it and uploaded to the Graph API.
	MediaDir string
}

// DefaultMediaDir is the coreapp's default media directory.
const DefaultMediaDir = "/usr/local/wamedia"

var (
	phoneIDRE = regexp.MustCompile(`^[0-9]{1,32}$`)
	versionRE = regexp.MustCompile(`^v[0-9]{1,3}\.[0-9]{1,3}$`)
)

// FromEnv reads the configuration from getenv (os.Getenv in the plugin),
// refusing values that cannot work with an error naming the variable.
// Secrets never appear in its errors.
func FromEnv(getenv func(string) string) (Config, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	c := Config{
		PhoneNumberID: strings.TrimSpace(getenv("MC_CLOUDAPI_PHONE_NUMBER_ID")),
		AccessToken:   strings.TrimSpace(getenv("MC_CLOUDAPI_ACCESS_TOKEN")),
		AppSecret:     getenv("MC_CLOUDAPI_APP_SECRET"),
		VerifyToken:   getenv("MC_CLOUDAPI_VERIFY_TOKEN"),
		GraphVersion:  or(strings.TrimSpace(getenv("MC_CLOUDAPI_GRAPH_VERSION")), graphapi.DefaultVersion),
		BaseURL:       strings.TrimRight(or(strings.TrimSpace(getenv("MC_CLOUDAPI_BASE_URL")), graphapi.DefaultBaseURL), "/"),
		MediaDir:      or(getenv("MC_MEDIA_DIR"), DefaultMediaDir),
	}
	var errs []error
	switch {
	case c.PhoneNumberID == "":
		errs = append(errs, errors.New("MC_CLOUDAPI_PHONE_NUMBER_ID is not set: the Cloud API phone number id (digits, from WhatsApp Manager or the app dashboard)"))
	case !phoneIDRE.MatchString(c.PhoneNumberID):
		errs = append(errs, fmt.Errorf("MC_CLOUDAPI_PHONE_NUMBER_ID=%q is not a phone number id (digits only)", c.PhoneNumberID))
	}
	if c.AccessToken == "" {
		errs = append(errs, errors.New("MC_CLOUDAPI_ACCESS_TOKEN is not set: a system user access token with whatsapp_business_messaging"))
	} else if strings.ContainsAny(c.AccessToken, " \t\r\n") {
		errs = append(errs, errors.New("MC_CLOUDAPI_ACCESS_TOKEN contains white space (value not shown)"))
	}
	if !versionRE.MatchString(c.GraphVersion) {
		errs = append(errs, fmt.Errorf("MC_CLOUDAPI_GRAPH_VERSION=%q is not a Graph API version such as %s", c.GraphVersion, graphapi.DefaultVersion))
	}
	if u, err := url.Parse(c.BaseURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" {
		errs = append(errs, fmt.Errorf("MC_CLOUDAPI_BASE_URL=%q is not an http(s) URL with a host", c.BaseURL))
	}
	dc, err := delivery.ConfigFromEnv(func(k string) string { return strings.TrimSpace(getenv(k)) })
	if err != nil {
		errs = append(errs, err)
	}
	c.Delivery = dc
	if len(errs) > 0 {
		return c, fmt.Errorf("cloud api transport configuration: %w", errors.Join(errs...))
	}
	return c, nil
}

// LogValue keeps secrets out of logs: a Config logged with slog shows
// whether each secret is set, never its value.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("phone_number_id", c.PhoneNumberID), slog.String("graph_version", c.GraphVersion),
		slog.String("base_url", c.BaseURL), slog.String("throughput", throughput(c.Delivery)),
		slog.String("unknown_outcome", string(c.Delivery.Policy)), slog.String("media_dir", c.MediaDir),
		slog.String("access_token", set(c.AccessToken)), slog.String("app_secret", set(c.AppSecret)),
		slog.String("verify_token", set(c.VerifyToken)),
	)
}

// String never prints a secret (fmt's %v of a Config).
func (c Config) String() string { return c.LogValue().String() }

// GoString never prints a secret either (fmt's %#v).
func (c Config) GoString() string { return c.String() }

func throughput(d delivery.Config) string {
	switch {
	case d.Unlimited:
		return "unlimited"
	case d.Throughput == 0:
		return strconv.Itoa(delivery.DefaultThroughput) + "/s"
	}
	return strconv.Itoa(d.Throughput) + "/s"
}

func set(s string) string {
	if s == "" {
		return "unset"
	}
	return "set"
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
