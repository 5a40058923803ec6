package transport

// Bodies and results of OpMediaDownload and OpMediaDelete (see ops.go), as
// JSON.

// MediaRef names one medium by id.
type MediaRef struct {
	ID string `json:"id"`
}

// MediaContent is a medium's bytes and type.
type MediaContent struct {
	MimeType string `json:"mime_type"`
	Data     []byte `json:"data"`
}

// MaxMediaContent bounds MediaContent.Data: the result crosses from
// plugin to host in one gRPC message (MaxGRPCMessage) as JSON, where bytes
// are base64 (4/3 of their size). Every inbound media type but large
// documents fits.
const MaxMediaContent = (MaxGRPCMessage - 64<<10) / 4 * 3
