package main

import (
	"testing"

	"github.com/multiconnect/multiconnect/internal/backup"
)

// A restore takes only what a backup of a working cluster holds: valid
// users including the built-in admin, and settings rows of JSON.
func TestCheckPayload(t *testing.T) {
	admin := backup.User{Username: "admin", PasswordHash: "$2a$10$x", Role: "ADMIN"}
	good := backup.Payload{Users: []backup.User{admin}, Settings: []backup.Setting{{Name: "application", Value: `{}`}}}
	if err := checkPayload(good); err != nil {
		t.Fatalf("a good payload: %v", err)
	}
	for name, p := range map[string]backup.Payload{
		"no users":         {},
		"no admin":         {Users: []backup.User{{Username: "bob", PasswordHash: "h", Role: "USER"}}},
		"admin demoted":    {Users: []backup.User{{Username: "admin", PasswordHash: "h", Role: "USER"}}},
		"unknown role":     {Users: []backup.User{admin, {Username: "eve", PasswordHash: "h", Role: "ROOT"}}},
		"no hash":          {Users: []backup.User{admin, {Username: "eve", Role: "USER"}}},
		"setting no name":  {Users: []backup.User{admin}, Settings: []backup.Setting{{Value: `{}`}}},
		"setting not JSON": {Users: []backup.User{admin}, Settings: []backup.Setting{{Name: "x", Value: `{`}}},
	} {
		if err := checkPayload(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
