package backup

import (
	"encoding/base64"
	"errors"
	"reflect"
	"testing"
)

func TestSealOpen(t *testing.T) {
	p := Payload{
		Settings: []Setting{{Name: "application", Value: `{"heartbeat_interval":1}`}, {Name: "account.profile.about", Value: `{"text":"hi"}`}},
		Users:    []User{{Username: "admin", PasswordHash: "$2a$10$abc", Role: "ADMIN"}},
	}
	data, err := Seal(p, "correct horse")
	if err != nil {
		t.Fatal(err)
	}
	got, err := Open(data, "correct horse")
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if !reflect.DeepEqual(got, p) {
		t.Fatalf("round trip: got %+v, want %+v", got, p)
	}
	again, _ := Seal(p, "correct horse")
	if again == data {
		t.Error("two seals of one payload are equal: salt and nonce must be random")
	}

	if _, err := Open(data, "wrong horse"); !errors.Is(err, ErrOpen) {
		t.Errorf("wrong password: %v, want ErrOpen", err)
	}
	raw, _ := base64.StdEncoding.DecodeString(data)
	for _, i := range []int{0, 5, 20, len(raw) / 2, len(raw) - 1} {
		bad := append([]byte(nil), raw...)
		bad[i] ^= 0x01
		if _, err := Open(base64.StdEncoding.EncodeToString(bad), "correct horse"); !errors.Is(err, ErrOpen) {
			t.Errorf("byte %d flipped: %v, want ErrOpen", i, err)
		}
	}
	for _, d := range []string{"", "not base64!", base64.StdEncoding.EncodeToString(raw[:30])} {
		if _, err := Open(d, "correct horse"); !errors.Is(err, ErrOpen) {
			t.Errorf("data %q: %v, want ErrOpen", d, err)
		}
	}
}
