package shard

import (
	"fmt"
	"hash/crc32"
	"testing"
)

func TestForIsCRC32OfDigits(t *testing.T) {
	// Known vector: crc32("123456789") = 0xCBF43926, the IEEE check value.
	got, err := For("+1 234-567-89", 32)
	if err != nil {
		t.Fatal(err)
	}
	if want := int(uint32(0xCBF43926) % 32); got != want {
		t.Fatalf("For = %d, want %d", got, want)
	}
}

func TestDoublingMovesHalfToSibling(t *testing.T) {
	for _, n := range []int{1, 2, 4, 8, 16} {
		moved := 0
		const keys = 20000
		for i := 0; i < keys; i++ {
			r := fmt.Sprintf("1555%07d", i)
			a, _ := For(r, n)
			b, _ := For(r, 2*n)
			if b != a && b != a+n {
				t.Fatalf("%s: shard %d of %d went to %d of %d", r, a, n, b, 2*n)
			}
			if b != a {
				moved++
			}
		}
		if frac := float64(moved) / keys; frac < 0.45 || frac > 0.55 {
			t.Fatalf("doubling %d moved %.3f of keys, want about half", n, frac)
		}
	}
}

func TestForRefusesBadInput(t *testing.T) {
	if _, err := For("abc", 4); err == nil {
		t.Fatal("no digits accepted")
	}
	if _, err := For("123", 3); err == nil {
		t.Fatal("shard count 3 accepted")
	}
	if _, err := For("123", 64); err == nil {
		t.Fatal("shard count 64 accepted")
	}
	if crc32.ChecksumIEEE([]byte("1")) == 0 {
		t.Fatal("crc32 broken")
	}
}
