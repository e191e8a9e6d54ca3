/* Shared between the files of src/frame only. */
#ifndef LM_FRAME_INTERNAL_H
#define LM_FRAME_INTERNAL_H

#include <stdint.h>

#include "frame/frame.h"

/* The cache's clock: the largest now_ms it has been given. Signed frames are
 * judged stale against it, and keys are pruned against it, so a wall clock
 * stepping back can never make a pruned key's frame fresh again. */
uint64_t lm_frame_replay_clock(struct lm_frame_replay *rp, uint64_t now_ms);

#endif
