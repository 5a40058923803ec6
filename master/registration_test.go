package main

import (
	"errors"
	"testing"

	"github.com/multiconnect/multiconnect/internal/apierror"
)

// Every bad POST /v1/account body gets the original's code: a missing
// field 1008 (reported before any bad value), a bad value 1009, a body
// that is not a JSON object 1025.
func TestParseAccountRequest(t *testing.T) {
	const cert = `"QWNtZSBXaWRnZXRz"` // base64("Acme Widgets")
	cases := []struct {
		body string
		code int
	}{
		{`{"cc":"1","phone_number":"6315551234","method":"sms","cert":` + cert + `}`, 0},
		{`{"cc":"44","phone_number":"7700900123","method":"voice","cert":` + cert + `,"pin":"123456"}`, 0},
		{`{"cc":"1","phone_number":"6315551234","method":"sms","cert":` + cert + `,"pin":""}`, 0},
		{`{"phone_number":"6315551234","method":"sms","cert":` + cert + `}`, apierror.ParameterMissing},
		{`{"cc":"","phone_number":"6315551234","method":"sms","cert":` + cert + `}`, apierror.ParameterMissing},
		{`{"cc":"1","method":"sms","cert":` + cert + `}`, apierror.ParameterMissing},
		{`{"cc":"1","phone_number":"6315551234","cert":` + cert + `}`, apierror.ParameterMissing},
		{`{"cc":"1","phone_number":"6315551234","method":"sms"}`, apierror.ParameterMissing},
		{`{"cc":"1234","phone_number":"bad","method":"fax"}`, apierror.ParameterMissing}, // missing first
		{`{"cc":"1234","phone_number":"6315551234","method":"sms","cert":` + cert + `}`, apierror.ParameterInvalid},
		{`{"cc":"+1","phone_number":"6315551234","method":"sms","cert":` + cert + `}`, apierror.ParameterInvalid},
		{`{"cc":1,"phone_number":"6315551234","method":"sms","cert":` + cert + `}`, apierror.ParameterInvalid},
		{`{"cc":"1","phone_number":"631-555-1234","method":"sms","cert":` + cert + `}`, apierror.ParameterInvalid},
		{`{"cc":"1","phone_number":"6315551234123456","method":"sms","cert":` + cert + `}`, apierror.ParameterInvalid},
		{`{"cc":"1","phone_number":"6315551234","method":"fax","cert":` + cert + `}`, apierror.ParameterInvalid},
		{`{"cc":"1","phone_number":"6315551234","method":"sms","cert":"not base64!"}`, apierror.ParameterInvalid},
		{`{"cc":"1","phone_number":"6315551234","method":"sms","cert":` + cert + `,"pin":"12345"}`, apierror.ParameterInvalid},
		{`not json`, apierror.RequestNotValid},
		{`[]`, apierror.RequestNotValid},
		{``, apierror.RequestNotValid},
	}
	for _, c := range cases {
		a, err := parseAccountRequest([]byte(c.body))
		var ie *inputError
		switch {
		case c.code == 0 && err != nil:
			t.Errorf("%s: %v", c.body, err)
		case c.code != 0 && (!errors.As(err, &ie) || ie.code != c.code):
			t.Errorf("%s: %v, want code %d", c.body, err, c.code)
		}
		if c.code == 0 && (string(a.Cert) != "Acme Widgets" || waID(a.CC, a.Phone) == "") {
			t.Errorf("%s: parsed %+v", c.body, a)
		}
	}
}

func TestParseVerifyRequest(t *testing.T) {
	cases := []struct {
		body string
		code int
	}{
		{`{"code":"012345"}`, 0},
		{`{}`, apierror.ParameterMissing},
		{`{"code":""}`, apierror.ParameterMissing},
		{`{"code":"12345"}`, apierror.ParameterInvalid},
		{`{"code":"123-456"}`, apierror.ParameterInvalid},
		{`{"code":123456}`, apierror.ParameterInvalid},
		{`"123456"`, apierror.RequestNotValid},
	}
	for _, c := range cases {
		code, err := parseVerifyRequest([]byte(c.body))
		var ie *inputError
		switch {
		case c.code == 0 && (err != nil || code != "012345"):
			t.Errorf("%s: %q, %v", c.body, code, err)
		case c.code != 0 && (!errors.As(err, &ie) || ie.code != c.code):
			t.Errorf("%s: %v, want code %d", c.body, err, c.code)
		}
	}
}
