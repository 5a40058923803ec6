package transport

// Bodies and results of OpMarkRead, OpIdentity, OpIdentityAck and
// OpStickerpacks (see ops.go), as JSON.

// MarkReadRequest names the inbound message the business read.
type MarkReadRequest struct {
	MessageID string `json:"message_id"`
	// From is the contact who sent it, as the cluster stored it.
	From string `json:"from"`
}

// IdentityRequest names a contact (WAID, digits) and, for OpIdentityAck,
// the identity hash acknowledged.
type IdentityRequest struct {
	WAID string `json:"wa_id"`
	Hash string `json:"hash,omitempty"`
}

// Identity is a contact's latest identity as the network knows it.
type Identity struct {
	Hash string `json:"hash"`
	// CreatedTimestamp is when the network saw this identity appear, in
	// Unix milliseconds (as the original's created_timestamp).
	CreatedTimestamp int64 `json:"created_timestamp"`
	// Acknowledged: the business acknowledged this hash (OpIdentityAck),
	// or it is the contact's first identity, which needs none.
	Acknowledged bool `json:"acknowledged"`
}

// Stickerpacks is the network's first-party sticker catalogue.
type Stickerpacks struct {
	Packs []Stickerpack `json:"stickerpacks"`
}

// Stickerpack is one first-party pack and its stickers, in index order.
type Stickerpack struct {
	ID        string    `json:"id"`
	Publisher string    `json:"publisher"`
	Name      string    `json:"name"`
	Stickers  []Sticker `json:"stickers"`
}

// Sticker is one sticker of a pack: its index in the pack, the id a
// message's sticker object names, and its emojis.
type Sticker struct {
	Index  string   `json:"index"`
	ID     string   `json:"id"`
	Emojis []string `json:"emojis"`
}
