package lease

import (
	"testing"
	"time"

	"github.com/multiconnect/multiconnect/internal/monotime"
)

func TestValidityCountsFromSendAndNeverMovesBack(t *testing.T) {
	var v Validity
	if v.Valid() {
		t.Fatal("zero validity is valid")
	}
	sent := monotime.Now() - int64(80*time.Millisecond) // the renewal took 80ms to answer
	v.Renewed(sent, 100*time.Millisecond)
	if !v.Valid() {
		t.Fatal("fresh lease not valid")
	}
	if r := v.Remaining(); r > 20*time.Millisecond-Margin(100*time.Millisecond) {
		t.Fatalf("remaining %v counts from the answer, not from the send", r)
	}
	v.Renewed(sent-int64(time.Second), 100*time.Millisecond) // a late answer to an older renewal
	if !v.Valid() {
		t.Fatal("an older renewal moved the deadline back")
	}
	time.Sleep(25 * time.Millisecond)
	if v.Valid() {
		t.Fatal("lease valid past sent+ttl")
	}
	v.Renewed(monotime.Now(), time.Second)
	v.Drop()
	if v.Valid() {
		t.Fatal("dropped lease valid")
	}
}
