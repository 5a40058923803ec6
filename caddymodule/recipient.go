package caddymodule

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/multiconnect/multiconnect/internal/apierror"
)

// requestError refuses a request before it is routed: nothing was sent
// anywhere, so nothing changed.
type requestError struct {
	status  int // 0: the code's usual status
	code    int
	details string
}

func (e *requestError) write(w http.ResponseWriter) { writeError(w, e.status, e.code, e.details) }

// maxRecipientLen bounds the `to` field: E.164 numbers have at most 15
// digits and group ids about 25 characters; anything longer is not an
// address and is refused before it costs a hash.
const maxRecipientLen = 64

// readBody reads the whole request body, refusing more than limit bytes
// with a 413 that names the limit. A declared length over the limit is
// refused without reading it.
func readBody(r *http.Request, limit int64) ([]byte, *requestError) {
	tooLarge := &requestError{http.StatusRequestEntityTooLarge, apierror.RequestNotValid,
		"request body larger than the gateway's limit of " + strconv.FormatInt(limit, 10) + " bytes"}
	if r.ContentLength > limit {
		return nil, tooLarge
	}
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	if r.ContentLength > 0 {
		// The common case: one allocation of the declared size, and a
		// one-byte read to prove the body ends there (a body longer than
		// declared is a framing error the server reports).
		buf := make([]byte, r.ContentLength+1)
		n, err := io.ReadFull(r.Body, buf)
		switch {
		case int64(n) > r.ContentLength:
			return nil, tooLarge
		case err == io.ErrUnexpectedEOF && int64(n) == r.ContentLength:
			return buf[:n], nil
		case err == io.ErrUnexpectedEOF || err == io.EOF:
			return nil, &requestError{http.StatusBadRequest, apierror.RequestNotValid, "the request body is shorter than its Content-Length"}
		}
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, tooLarge
		}
		return nil, &requestError{http.StatusBadRequest, apierror.RequestNotValid, "reading the request body: " + err.Error()}
	}
	var buf bytes.Buffer
	buf.Grow(512)
	n, err := buf.ReadFrom(io.LimitReader(r.Body, limit+1))
	if n > limit {
		return nil, tooLarge
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, tooLarge
		}
		return nil, &requestError{http.StatusBadRequest, apierror.RequestNotValid, "reading the request body: " + err.Error()}
	}
	return buf.Bytes(), nil
}

// messageRecipient returns the `to` of a POST /v1/messages body, refusing
// what the original refused (not JSON, no `to`) and what could make the
// gateway and the coreapp disagree on the recipient: a duplicated "to" or a
// case variant such as "To" (Go's decoder matches those to `to` and keeps
// the last, other decoders the first).
func messageRecipient(body []byte) (string, *requestError) {
	if len(bytes.TrimSpace(body)) == 0 {
		return "", &requestError{0, apierror.RequestNotValid, "the request body is empty: send a JSON object with a \"to\" field"}
	}
	if !json.Valid(body) {
		return "", &requestError{0, apierror.RequestNotValid, "the request body is not valid JSON"}
	}
	raw, found, err := topLevelField(body, "to")
	if err != nil {
		return "", err
	}
	if !found || string(raw) == "null" {
		return "", &requestError{0, apierror.ParameterMissing, "\"to\" is required: the recipient's phone number or WhatsApp ID"}
	}
	if raw[0] != '"' {
		return "", &requestError{0, apierror.ParameterInvalid, "\"to\" must be a string"}
	}
	var to string
	if bytes.IndexByte(raw, '\\') < 0 {
		to = string(raw[1 : len(raw)-1])
	} else if err := json.Unmarshal(raw, &to); err != nil {
		return "", &requestError{0, apierror.ParameterInvalid, "\"to\" is not a valid JSON string"}
	}
	if err := checkRecipient(to); err != nil {
		return "", &requestError{0, apierror.ParameterInvalid, err.Error()}
	}
	return to, nil
}

// checkRecipient accepts a phone number or WhatsApp ID: digits, with the
// punctuation people write numbers with. The shard hash uses the digits
// only, so "+1 (555) 010-0000" and "15550100000" are one recipient.
func checkRecipient(to string) error {
	if len(to) > maxRecipientLen {
		return fmt.Errorf("\"to\" is longer than %d characters", maxRecipientLen)
	}
	digits := 0
	for i := 0; i < len(to); i++ {
		switch c := to[i]; {
		case c >= '0' && c <= '9':
			digits++
		case c == '+' || c == '-' || c == '(' || c == ')' || c == ' ' || c == '.':
		default:
			return fmt.Errorf("\"to\" must be a phone number or WhatsApp ID (digits, optionally with + - ( ) . and spaces); %q is not", to)
		}
	}
	if digits == 0 {
		return fmt.Errorf("\"to\" has no digits: %q", to)
	}
	return nil
}

// topLevelField finds key among the members of the JSON object doc (which
// must already be valid JSON) and returns its raw value. It scans without
// decoding values, so a large message body costs one pass and no
// allocation. A duplicate key, or a key equal to key but for case, is an
// error.
func topLevelField(doc []byte, key string) ([]byte, bool, *requestError) {
	i := skipSpace(doc, 0)
	if i >= len(doc) || doc[i] != '{' {
		return nil, false, &requestError{0, apierror.RequestNotValid, "the request body must be a JSON object"}
	}
	i++
	var found []byte
	for {
		i = skipSpace(doc, i)
		if doc[i] == '}' {
			return found, found != nil, nil
		}
		if doc[i] == ',' {
			i = skipSpace(doc, i+1)
		}
		kStart := i
		i = skipString(doc, i)
		name := doc[kStart+1 : i-1]
		if bytes.IndexByte(name, '\\') >= 0 {
			var s string
			if json.Unmarshal(doc[kStart:i], &s) == nil {
				name = []byte(s)
			}
		}
		i = skipSpace(doc, i)
		i = skipSpace(doc, i+1) // the colon
		vStart := i
		i = skipValue(doc, i)
		if bytes.EqualFold(name, []byte(key)) {
			if string(name) != key {
				return nil, false, &requestError{0, apierror.ParameterInvalid, fmt.Sprintf("unknown field %q: did you mean %q?", name, key)}
			}
			if found != nil {
				return nil, false, &requestError{0, apierror.ParameterInvalid, fmt.Sprintf("%q appears more than once", key)}
			}
			found = doc[vStart:i]
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] == '"'.
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return i
}

// skipValue returns the index after the value starting at b[i].
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = skipString(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	default: // number, true, false, null
		for i < len(b) && b[i] != ',' && b[i] != '}' && b[i] != ']' && b[i] != ' ' && b[i] != '\t' && b[i] != '\n' && b[i] != '\r' {
			i++
		}
		return i
	}
}
