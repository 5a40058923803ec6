package pause

import (
	"context"
	"testing"
	"time"
)

func TestForWaitsTheWholeDuration(t *testing.T) {
	start := time.Now()
	if !For(context.Background(), 30*time.Millisecond) {
		t.Fatal("For returned false with a live context")
	}
	if el := time.Since(start); el < 30*time.Millisecond {
		t.Fatalf("For returned after %v, want at least 30ms", el)
	}
}

func TestForEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	start := time.Now()
	if For(ctx, time.Minute) {
		t.Fatal("For returned true though its context ended")
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("For returned %v after its context ended", el)
	}
}
