package transport

// Operations for Transport.Call. Each names what its body and result are;
// bodies and results are JSON unless an op says otherwise. A network that
// lacks an op answers ErrUnsupported, and the API answers that as the
// original answered an operation its deployment did not offer.
//
// Ops are added here, one constant (and its body and result types, in a
// file of the area that uses them) per operation, so that a plugin's
// switch over them is the complete list of what it offers.

// Account-level settings (the API's /v1/settings/profile/*,
// /v1/settings/business/profile, /v1/settings/account/two-step), applied by
// the primary master through its plugin. They need no shard connection.
// Bodies and results are the types in account.go; a value the network
// refuses fails with ErrInvalidValue.
const (
	// OpSetProfileAbout: body ProfileAbout; result empty.
	OpSetProfileAbout = "account.profile.about.set"
	// OpSetProfilePhoto: body ProfilePhoto; result ProfilePhotoResult.
	OpSetProfilePhoto = "account.profile.photo.set"
	// OpDeleteProfilePhoto: body empty; result empty.
	OpDeleteProfilePhoto = "account.profile.photo.delete"
	// OpSetBusinessProfile: body BusinessProfile, the whole profile as it
	// is to be; result empty.
	OpSetBusinessProfile = "account.business.profile.set"
	// OpSetTwoStep: body TwoStep; result empty.
	OpSetTwoStep = "account.two_step.set"
	// OpDeleteTwoStep: body empty; result empty.
	OpDeleteTwoStep = "account.two_step.delete"
)

// Ops of the messages, contacts and stickers surface (types in rest.go).
const (
	// OpMarkRead tells the network that the business read an inbound
	// message. Body: MarkReadRequest. Result: empty. Needs the connection
	// of the sender's shard. ErrNoSuchItem: the network has no inbound
	// message with that id.
	OpMarkRead = "mark_read"
	// OpIdentity reads a contact's identity. Body: IdentityRequest (Hash
	// empty). Result: Identity. ErrNoSuchItem: not an account.
	OpIdentity = "identity"
	// OpIdentityAck acknowledges a contact's latest identity. Body:
	// IdentityRequest with the Hash acknowledged. Result: empty.
	// ErrInvalidValue: not the contact's latest hash; ErrNoSuchItem: not
	// an account.
	OpIdentityAck = "identity_ack"
	// OpStickerpacks lists the network's first-party sticker packs.
	// Body: empty. Result: Stickerpacks.
	OpStickerpacks = "stickerpacks"
)

// Ops on media held by the network (types in media.go). Neither needs a
// shard connection. A network whose messages carry media as links (the
// simulated network) answers ErrUnsupported, and the coreapp then has
// nothing to fetch or to delete there.
const (
	// OpMediaDownload fetches an inbound message's media from the network.
	// Body: MediaRef (the id an inbound message named). Result:
	// MediaContent. ErrNoSuchItem: the network has no such media (or no
	// longer: networks keep media for a limited time); ErrInvalidValue:
	// the media is larger than MaxMediaContent.
	OpMediaDownload = "media.download"
	// OpMediaDelete tells the network that the API deleted one of its
	// uploads (DELETE /v1/media/{id}): the network drops the copy it took
	// to send it, if it took one. Body: MediaRef (the API's media id).
	// Result: empty.
	OpMediaDelete = "media.delete"
)

// Ops of the event stream.
const (
	// OpEventsStored tells a network whose events the cluster stores for it
	// (the Cloud API's webhooks, stored by the gateway) that new events of
	// a shard were committed: the plugin holding that shard reads them now
	// rather than at its next safety poll. Body: EventsStored. Result:
	// empty. A wake for a shard the plugin does not hold is taken and
	// ignored (the claim moved; its new holder reads on connecting). A
	// network that pushes its events itself answers ErrUnsupported.
	OpEventsStored = "events.stored"
)

// EventsStored is OpEventsStored's body.
type EventsStored struct {
	Shard int `json:"shard"`
}
