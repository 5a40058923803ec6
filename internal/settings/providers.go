package settings

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/multiconnect/multiconnect/internal/cluster"
	"github.com/multiconnect/multiconnect/internal/openapi"
)

// Media providers (/v1/settings/application/media/providers): named
// credentials the coreapps use to fetch a message's media link. They are
// one self-contained JSON document, the settings row providersRow, so a
// backup that copies the settings table copies them whole.

// Provider is one media provider, as the original's API writes it.
type Provider struct {
	Name   string         `json:"name"`
	Type   string         `json:"type"`
	Config ProviderConfig `json:"config"`
}

// ProviderConfig holds exactly one of Basic or Bearer.
type ProviderConfig struct {
	Basic  *BasicAuth `json:"basic,omitempty"`
	Bearer string     `json:"bearer,omitempty"`
}

// BasicAuth is HTTP basic authentication.
type BasicAuth struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// Masked is what GET shows of a secret: a fixed string, so not even the
// secret's length is told.
const Masked = "********"

// Masked returns p with its credentials (username and password, or token)
// replaced by Masked: GET tells which provider uses which kind of
// authentication, never with what.
func (p Provider) Masked() Provider {
	out := p
	if p.Config.Basic != nil {
		out.Config.Basic = &BasicAuth{Username: Masked, Password: Masked}
	}
	if p.Config.Bearer != "" {
		out.Config.Bearer = Masked
	}
	return out
}

const providersRow = "media.providers"

type providersDoc struct {
	Providers []Provider `json:"providers"`
}

// ErrNoProvider is a provider name that is not configured (API 1006 on
// DELETE, 1009 in a message).
var ErrNoProvider = errors.New("no such media provider")

// LoadProviders reads every provider, with its credentials.
func LoadProviders(ctx context.Context, q cluster.Querier) ([]Provider, error) {
	var doc providersDoc
	err := getRow(ctx, q, providersRow, &doc)
	return doc.Providers, err
}

// PutProvider adds body's provider (the original's POST body: an array of
// one, checked against the MediaProviders schema), replacing one of the
// same name. q should be the primary master's fenced transaction.
func PutProvider(ctx context.Context, q cluster.Querier, body []byte) (Provider, error) {
	if inv := openapi.Validate("MediaProviders", body); inv != nil {
		return Provider{}, inv
	}
	var in []Provider
	if err := json.Unmarshal(body, &in); err != nil || len(in) != 1 {
		return Provider{}, fmt.Errorf("%w: one provider is required", ErrInvalid)
	}
	p := in[0]
	list, err := LoadProviders(ctx, q)
	if err != nil {
		return p, err
	}
	list = slices.DeleteFunc(list, func(x Provider) bool { return x.Name == p.Name })
	return p, storeProviders(ctx, q, append(list, p))
}

// DeleteProvider removes the provider name; ErrNoProvider if there is none.
func DeleteProvider(ctx context.Context, q cluster.Querier, name string) error {
	list, err := LoadProviders(ctx, q)
	if err != nil {
		return err
	}
	n := len(list)
	list = slices.DeleteFunc(list, func(x Provider) bool { return x.Name == name })
	if len(list) == n {
		return fmt.Errorf("%w: %q", ErrNoProvider, name)
	}
	return storeProviders(ctx, q, list)
}

// storeProviders writes the row and bumps settings_version, so every
// coreapp's cache of them reloads at its next use.
func storeProviders(ctx context.Context, q cluster.Querier, list []Provider) error {
	if list == nil {
		list = []Provider{}
	}
	return putRow(ctx, q, providersRow, providersDoc{Providers: list})
}
