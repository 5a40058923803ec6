package cloudapi

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"

	"github.com/multiconnect/multiconnect/plugins/cloudapi/graph"
	"github.com/multiconnect/multiconnect/plugins/cloudapi/graphapi"
	"github.com/multiconnect/multiconnect/plugins/transport"
)

// The transport's Call ops, registration and media on the Cloud API: each
// On-Premises operation mapped to its Graph API endpoint, or answered
// ErrUnsupported with the reason when the Cloud API has no such thing (the
// README's "Cloud API transport" has the table). They need no shard
// connection, except mark_read, which the contract gives to the sender's
// shard.

// messagingProduct is the value every Cloud API body names.
const messagingProduct = "whatsapp"

// Reasons for the ops the Cloud API does not have. They reach the API's
// answer (the error's text), so they say what to do instead.
const (
	whyNoPhoto = "the Cloud API sets the profile photo only through a profile_picture_handle of the Resumable Upload API " +
		"(POST /{app-id}/uploads, then POST /{upload-session-id}), which Meta's OpenAPI description v23.0 does not describe " +
		"and which needs the app id, not part of this transport's configuration: set the photo in WhatsApp Manager"
	whyNoPhotoDelete = "the Cloud API has no way to remove a profile photo (whatsapp_business_profile only replaces it): change it in WhatsApp Manager"
	whyNoTwoStepOff  = "the Cloud API has no endpoint to disable two-step verification (only POST /{phone-number-id} with a new pin): " +
		"turn it off in WhatsApp Manager"
	whyNoIdentity = "the Cloud API has no identity check: contacts' identity changes are not exposed to businesses"
)

// operations performs the ops against the Graph API.
type operations struct {
	g   *graph.Client
	log *slog.Logger
	// db is the cluster's database (WA_DB_*): the media cache and the
	// stored two-step PIN. nil: no cache (every send of a medium uploads
	// it again) and no stored PIN.
	db *sql.DB
	// mediaDir is the shared media directory the API's uploads are in.
	mediaDir string
	// sender is the current connection's identity for a request that
	// needs one (mark_read); it fails with ErrNotConnected without one,
	// or ErrDeadlinePassed past its deadline.
	sender func() (graph.Sender, error)
	// tokenRefused is told of every Graph error 190 (the access token
	// expired or was revoked), so Health shows it until a request works.
	tokenRefused func(*graphapi.Error)

	mu sync.Mutex
	// pins are the two-step PINs given with RequestCode, by cc+phone, for
	// the /register that follows VerifyCode.
	pins map[string]string
}

func newOperations(g *graph.Client, db *sql.DB, mediaDir string, log *slog.Logger) *operations {
	if log == nil {
		log = slog.Default()
	}
	return &operations{g: g, db: db, mediaDir: mediaDir, log: log, pins: map[string]string{},
		sender:       func() (graph.Sender, error) { return graph.Sender{}, transport.ErrNotConnected },
		tokenRefused: func(*graphapi.Error) {}}
}

// call performs one transport Call op.
func (o *operations) call(ctx context.Context, op string, body []byte) ([]byte, error) {
	switch op {
	case transport.OpSetProfileAbout:
		var in transport.ProfileAbout
		if err := decodeBody(op, body, &in); err != nil {
			return nil, err
		}
		return o.postProfile(ctx, op, businessProfileUpdate{MessagingProduct: messagingProduct, About: &in.Text})
	case transport.OpSetBusinessProfile:
		var in transport.BusinessProfile
		if err := decodeBody(op, body, &in); err != nil {
			return nil, err
		}
		up, err := profileUpdate(in)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		return o.postProfile(ctx, op, up)
	case transport.OpSetProfilePhoto:
		return nil, fmt.Errorf("%s: %w: %s", op, transport.ErrUnsupported, whyNoPhoto)
	case transport.OpDeleteProfilePhoto:
		return nil, fmt.Errorf("%s: %w: %s", op, transport.ErrUnsupported, whyNoPhotoDelete)
	case transport.OpSetTwoStep:
		var in transport.TwoStep
		if err := decodeBody(op, body, &in); err != nil {
			return nil, err
		}
		// POST /{phone-number-id} with pin (Meta's "two-step verification").
		if err := o.do(ctx, op, graph.Sender{}, http.MethodPost, "/"+o.g.PhoneNumberID(), map[string]string{"pin": in.Pin}, nil); err != nil {
			return nil, err
		}
		return []byte("{}"), nil
	case transport.OpDeleteTwoStep:
		return nil, fmt.Errorf("%s: %w: %s", op, transport.ErrUnsupported, whyNoTwoStepOff)
	case transport.OpMarkRead:
		var in transport.MarkReadRequest
		if err := decodeBody(op, body, &in); err != nil {
			return nil, err
		}
		return o.markRead(ctx, in)
	case transport.OpIdentity, transport.OpIdentityAck:
		return nil, fmt.Errorf("%s: %w: %s", op, transport.ErrUnsupported, whyNoIdentity)
	case transport.OpStickerpacks:
		// The Cloud API has no first-party sticker packs (stickers are
		// sent as media, by id or link): the catalogue is empty.
		return json.Marshal(transport.Stickerpacks{Packs: []transport.Stickerpack{}})
	case transport.OpMediaDownload:
		var in transport.MediaRef
		if err := decodeBody(op, body, &in); err != nil {
			return nil, err
		}
		mc, err := o.downloadMedia(ctx, in.ID)
		if err != nil {
			return nil, err
		}
		return json.Marshal(mc)
	case transport.OpMediaDelete:
		var in transport.MediaRef
		if err := decodeBody(op, body, &in); err != nil {
			return nil, err
		}
		if err := o.DeleteMedia(ctx, in.ID); err != nil {
			return nil, err
		}
		return []byte("{}"), nil
	default:
		return nil, fmt.Errorf("%w: %q", transport.ErrUnsupported, op)
	}
}

func decodeBody(op string, body []byte, v any) error {
	if len(body) == 0 {
		body = []byte("{}")
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%s: %w: body: %v", op, transport.ErrInvalidValue, err)
	}
	return nil
}

// markRead is POST /{phone-number-id}/messages with status read: the
// inbound message's id is its wamid (the webhook stored it as such).
func (o *operations) markRead(ctx context.Context, in transport.MarkReadRequest) ([]byte, error) {
	who, err := o.sender()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", transport.OpMarkRead, err)
	}
	if in.MessageID == "" {
		return nil, fmt.Errorf("%s: %w: no message id", transport.OpMarkRead, transport.ErrInvalidValue)
	}
	req := struct {
		MessagingProduct string `json:"messaging_product"`
		Status           string `json:"status"`
		MessageID        string `json:"message_id"`
	}{messagingProduct, "read", in.MessageID}
	if err := o.do(ctx, transport.OpMarkRead, who, http.MethodPost, "/"+o.g.PhoneNumberID()+"/messages", req, nil); err != nil {
		return nil, err
	}
	return []byte("{}"), nil
}

// do sends a JSON request (body nil: none) and maps what comes back (see
// mapError).
func (o *operations) do(ctx context.Context, op string, who graph.Sender, method, path string, body, out any) error {
	var b []byte
	ct := ""
	if body != nil {
		var err error
		if b, err = json.Marshal(body); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		ct = "application/json"
	}
	return o.mapError(op, o.g.Do(ctx, who, method, path, ct, b, out))
}

// Graph codes mapped to transport errors beyond graphapi's.
const (
	// codeNotFound: "some of the aliases you requested do not exist"
	// (a phone number id, a profile).
	codeNotFound = 803
	// subcodeNoObject with code 100: "Unsupported get request. Object with
	// ID ... does not exist, cannot be loaded due to missing permissions,
	// or does not support this operation": the id names nothing this
	// token can see (a media id past its retention, say).
	subcodeNoObject = 33
)

// mapError turns a Graph answer into the transport's errors, so the API
// answers as the original did: 100 and 131009 (a parameter the network
// refused) are ErrInvalidValue (1009); 803, 100 with subcode 33 and HTTP
// 404 (no such object) are ErrNoSuchItem (1006); 190 (the token) is told to Health and
// returned as an error that says so. Anything else keeps the Graph error
// in its text (the API answers it as a network failure, to try again).
func (o *operations) mapError(op string, err error) error {
	if err == nil {
		return nil
	}
	var ge *graphapi.Error
	if !errors.As(err, &ge) {
		return fmt.Errorf("%s: %w", op, err)
	}
	// Both the sentinel and the Graph error stay in the chain: callers
	// test the one (errors.Is), registration reads the other's code.
	wrap := func(sentinel error) error {
		if ge.ErrorData != nil && ge.ErrorData.Details != "" {
			return fmt.Errorf("%s: %w: %w: %s", op, sentinel, ge, ge.ErrorData.Details)
		}
		return fmt.Errorf("%s: %w: %w", op, sentinel, ge)
	}
	switch {
	case ge.Code == graphapi.CodeAccessToken:
		o.tokenRefused(ge)
		return fmt.Errorf("%s: the Cloud API refused the access token (MC_CLOUDAPI_ACCESS_TOKEN expired or revoked; code 190): %w", op, ge)
	case ge.Code == codeNotFound || (ge.Code == graphapi.CodeInvalidParameter && ge.ErrorSubcode == subcodeNoObject) ||
		ge.HTTPStatus == http.StatusNotFound:
		return wrap(transport.ErrNoSuchItem)
	case ge.Code == graphapi.CodeInvalidParameter || ge.Code == graphapi.CodeRecipientNotValid:
		return wrap(transport.ErrInvalidValue)
	}
	return fmt.Errorf("%s: %w", op, ge)
}

// businessProfileUpdate is Meta's WhatsAppBusinessProfileUpdateRequest.
// Pointers: a field left nil is not sent (the Graph API keeps its value).
type businessProfileUpdate struct {
	MessagingProduct string    `json:"messaging_product"`
	About            *string   `json:"about,omitempty"`
	Address          *string   `json:"address,omitempty"`
	Description      *string   `json:"description,omitempty"`
	Email            *string   `json:"email,omitempty"`
	Vertical         *string   `json:"vertical,omitempty"`
	Websites         *[]string `json:"websites,omitempty"`
}

// verticals maps the original's business verticals to the Cloud API's
// (WhatsAppBusinessVertical): one to one.
var verticals = map[string]string{
	"Automotive": "AUTO", "Beauty, Spa and Salon": "BEAUTY", "Clothing and Apparel": "APPAREL",
	"Education": "EDU", "Entertainment": "ENTERTAIN", "Event Planning and Service": "EVENT_PLAN",
	"Finance and Banking": "FINANCE", "Food and Grocery": "GROCERY", "Public Service": "GOVT",
	"Hotel and Lodging": "HOTEL", "Medical and Health": "HEALTH", "Non-profit": "NONPROFIT",
	"Professional Services": "PROF_SERVICES", "Shopping and Retail": "RETAIL",
	"Travel and Transportation": "TRAVEL", "Restaurant": "RESTAURANT", "Other": "OTHER",
}

// profileUpdate is the Cloud API update that makes the profile p, which is
// the whole profile as it is to be: text fields are sent empty to clear
// them and websites as an empty list. An email or a vertical cannot be
// cleared (the Cloud API takes only a valid address and one of its
// verticals): left empty, they are not sent and keep their value there.
func profileUpdate(p transport.BusinessProfile) (businessProfileUpdate, error) {
	up := businessProfileUpdate{MessagingProduct: messagingProduct, Address: &p.Address, Description: &p.Description}
	websites := p.Websites
	if websites == nil {
		websites = []string{}
	}
	up.Websites = &websites
	if p.Email != "" {
		up.Email = &p.Email
	}
	if p.Vertical != "" {
		v, ok := verticals[p.Vertical]
		if !ok {
			return up, fmt.Errorf("%w: vertical %q has no Cloud API equivalent", transport.ErrInvalidValue, p.Vertical)
		}
		up.Vertical = &v
	}
	return up, nil
}

// postProfile is POST /{phone-number-id}/whatsapp_business_profile.
func (o *operations) postProfile(ctx context.Context, op string, up businessProfileUpdate) ([]byte, error) {
	if err := o.do(ctx, op, graph.Sender{}, http.MethodPost, "/"+o.g.PhoneNumberID()+"/whatsapp_business_profile", up, nil); err != nil {
		return nil, err
	}
	return []byte("{}"), nil
}
