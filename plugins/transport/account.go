package transport

// Bodies and results of the account-level settings ops (see ops.go). They
// are JSON on the wire between host and plugin.

// ProfileAbout is the text of the profile's About section.
type ProfileAbout struct {
	Text string `json:"text"`
}

// ProfilePhoto is the profile photo as the API took it.
type ProfilePhoto struct {
	ContentType string `json:"content_type"` // image/jpeg or image/png
	Data        []byte `json:"data"`
}

// ProfilePhotoResult is the network's answer to OpSetProfilePhoto.
type ProfilePhotoResult struct {
	// Link is a public URL of the photo at the network ("" when the
	// network publishes none); GET /v1/settings/profile/photo?format=link
	// answers it.
	Link string `json:"link,omitempty"`
}

// BusinessProfile is the business profile (the original's fields).
type BusinessProfile struct {
	Address     string   `json:"address,omitempty"`
	Description string   `json:"description,omitempty"`
	Email       string   `json:"email,omitempty"`
	Vertical    string   `json:"vertical,omitempty"`
	Websites    []string `json:"websites,omitempty"`
}

// TwoStep sets the account's two-step verification PIN.
type TwoStep struct {
	Pin string `json:"pin"` // 6 digits
}
