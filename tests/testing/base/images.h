// Test images. Torch-free.
#ifndef TANDEM_TESTS_TESTING_BASE_IMAGES_H_
#define TANDEM_TESTS_TESTING_BASE_IMAGES_H_

#include "models/formats/png.h"

namespace tandem::testing {

// A width x height image of `channels` whose pixels follow a pattern of `seed` in which every
// byte value appears (in an image large enough), so a gamma or alpha conversion would show.
RawImage PatternImage(int width, int height, int channels, int seed = 0);

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_BASE_IMAGES_H_
