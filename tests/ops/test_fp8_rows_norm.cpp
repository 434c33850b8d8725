// At how many rows the fp8 rows GEMV fuses the norm before it (ops/fp8_rows_norm.hpp): the default,
// the switch's values and the ones it refuses.
#include <gtest/gtest.h>

#include <string>

#include "pie/ops/fp8_rows_norm.hpp"

namespace {

TEST(Fp8RowsNorm, DefaultFusesTwoRowsOnly) {
  EXPECT_EQ(pie::ops::fp8_rows_norm_max_rows(nullptr), 2);
  EXPECT_EQ(pie::ops::fp8_rows_norm_max_rows(""), 2);
}

TEST(Fp8RowsNorm, ZeroIsOffOneIsEveryRowCountAndTwoToFourAreTheMostRows) {
  EXPECT_EQ(pie::ops::fp8_rows_norm_max_rows("0"), 0);
  EXPECT_EQ(pie::ops::fp8_rows_norm_max_rows("1"), 4);
  EXPECT_EQ(pie::ops::fp8_rows_norm_max_rows("2"), 2);
  EXPECT_EQ(pie::ops::fp8_rows_norm_max_rows("3"), 3);
  EXPECT_EQ(pie::ops::fp8_rows_norm_max_rows("4"), 4);
}

TEST(Fp8RowsNorm, OtherValuesAreRefusedNamingTheVariable) {
  for (const char* bad : {"5", "-1", "on", "2x", " 2"}) {
    try {
      pie::ops::fp8_rows_norm_max_rows(bad);
      ADD_FAILURE() << bad << " accepted";
    } catch (const pie::Error& e) {
      EXPECT_NE(std::string(e.what()).find("PIE_FP8_ROWS_NORM"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
