package main

import (
	"bytes"
	"errors"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"testing"

	"github.com/multiconnect/multiconnect/internal/apierror"
)

func encodePNG(t *testing.T, img image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// The photo is cropped to its centred square, scaled down to 640 px at
// most (never up) and made a JPEG; what is not a JPEG or PNG, or decodes
// to too many pixels, is refused with 1009.
func TestMakeProfilePhoto(t *testing.T) {
	// 2000×1000: a red left quarter, green middle half, blue right quarter.
	wide := image.NewRGBA(image.Rect(0, 0, 2000, 1000))
	for x := 0; x < 2000; x++ {
		c := color.RGBA{0, 200, 0, 255}
		if x < 500 {
			c = color.RGBA{200, 0, 0, 255}
		} else if x >= 1500 {
			c = color.RGBA{0, 0, 200, 255}
		}
		for y := 0; y < 1000; y++ {
			wide.Set(x, y, c)
		}
	}
	for _, tc := range []struct {
		name string
		in   image.Image
		edge int
	}{
		{"wide", wide, 640},
		{"small", image.NewGray(image.Rect(0, 0, 16, 16)), 16},
		{"tall", image.NewGray(image.Rect(0, 0, 300, 900)), 300},
	} {
		out, err := makeProfilePhoto(encodePNG(t, tc.in))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		img, err := jpeg.Decode(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("%s: the result is not a JPEG: %v", tc.name, err)
		}
		if b := img.Bounds(); b.Dx() != tc.edge || b.Dy() != tc.edge {
			t.Errorf("%s: %v, want %d×%d", tc.name, b, tc.edge, tc.edge)
		}
		if tc.name == "wide" {
			// The centred square is the green middle: no red, no blue.
			for _, x := range []int{5, 320, 634} {
				r, g, b, _ := img.At(x, 320).RGBA()
				if g>>8 < 150 || r>>8 > 60 || b>>8 > 60 {
					t.Errorf("pixel %d of the crop is %d,%d,%d, want the green middle", x, r>>8, g>>8, b>>8)
				}
			}
		}
	}
	huge := encodePNG(t, image.NewGray(image.Rect(0, 0, 5000, 4000)))
	for name, in := range map[string][]byte{"text": []byte("not a picture"), "20 megapixels": huge} {
		var ie *inputError
		if _, err := makeProfilePhoto(in); !errors.As(err, &ie) || ie.code != apierror.ParameterInvalid {
			t.Errorf("%s: %v, want 1009", name, err)
		}
	}
}
