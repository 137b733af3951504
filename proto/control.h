/* control.h - framing of control-plane messages (proto/control.proto).
 *
 * A control message on the wire is the protobuf encoding of one
 * ControlMessage, nothing more (the transport delimits messages). These
 * wrappers bound its size, check its version before anything else and make
 * sure it carries a body, so the rest of the code only ever sees messages of
 * this build's version.
 *
 * Ownership: mc_control_pack() returns a malloc'd buffer the caller free()s;
 * mc_control_unpack() returns a message the caller releases with
 * mc_control_free().
 */
#ifndef MC_CONTROL_H
#define MC_CONTROL_H

#include <stddef.h>
#include <stdint.h>

#include "control.pb-c.h"
#include "status.h"
#include "step_plan.h"

/* Wire version spoken by this build; see control.proto for when to bump it.
 * 2: SeqEntry.logits (LOGITS_ALL would be misread as "last" by version 1).
 * 3: StepPlan.release (a version 2 worker would ignore it and keep the
 *    sequences), Hello's served facts (model_type .. max_pos).
 * 4: SeqEntry.draw / SeqResult.drawn (a version 3 worker would ignore the
 *    draw and answer with the whole row). */
#define MC_CONTROL_VERSION 4u

/* Largest packed message accepted or produced, in bytes. */
#define MC_CONTROL_MAX_BYTES ((size_t)64 << 20)

/* Initializes *msg as an empty message of this build's version (no body yet). */
void mc_control_init(ControlMessage *msg);

/* Serializes msg into a new buffer (*buf, *len; caller frees *buf with free()).
 * Refuses, with *buf = NULL: NULL arguments or a message without body
 * (MC_ERR_ARG), a version other than MC_CONTROL_VERSION (MC_ERR_ARG), an
 * encoding larger than MC_CONTROL_MAX_BYTES (MC_ERR_OVERFLOW). */
mc_status mc_control_pack(const ControlMessage *msg, uint8_t **buf, size_t *len);

/* Parses len bytes from a peer into *out (release with mc_control_free()).
 * Refuses, with *out = NULL and a one-line message in err: more than
 * MC_CONTROL_MAX_BYTES, a version other than MC_CONTROL_VERSION
 * (MC_ERR_UNSUPPORTED; checked before the body is decoded), bytes that do
 * not decode (MC_ERR_FORMAT), a message without a known body and bodies
 * that contradict themselves (MC_ERR_FORMAT). */
mc_status mc_control_unpack(const uint8_t *buf, size_t len, ControlMessage **out, mc_err *err);

/* Frees a message returned by mc_control_unpack(); NULL is fine. */
void mc_control_free(ControlMessage *msg);

/* Packs a step plan as one ControlMessage (this build's version, body
 * step) into a new buffer (*buf, *len; caller frees *buf with free()). The
 * plan is not checked here (mc_step_plan_check() is the sender's business
 * and the receiver's). Refuses, with *buf = NULL: NULL arguments
 * (MC_ERR_ARG), an encoding over MC_CONTROL_MAX_BYTES (MC_ERR_OVERFLOW). */
mc_status mc_control_pack_step(const mc_step_plan *plan, uint8_t **buf, size_t *len, mc_err *err);

/* mc_control_pack_step() with StepPlan.release: the n_release sequence ids
 * (borrowed) the worker forgets before it runs the plan (a plan with no
 * entries then only releases). More than MC_STEP_MAX_SEQS ids, or NULL ids
 * with a count, are MC_ERR_ARG. */
mc_status mc_control_pack_step_release(const mc_step_plan *plan, const uint64_t *release,
                                       size_t n_release, uint8_t **buf, size_t *len, mc_err *err);

/* Copies the StepPlan of an unpacked message into *out (initialized here;
 * release with mc_step_plan_free()). Counts are bounded before anything is
 * allocated: more than MC_STEP_MAX_SEQS entries (or release ids), MC_STEP_MAX_TOKENS tokens
 * or MC_STEP_MAX_BLOCKS block ids in all, a NULL entry or an unknown logits
 * mode are MC_ERR_FORMAT naming the field. *out is empty on failure. */
mc_status mc_control_step_to_plan(const StepPlan *msg, mc_step_plan *out, mc_err *err);

/* mc_control_unpack() then mc_control_step_to_plan(); a message with
 * another body is MC_ERR_FORMAT. *out is empty on failure. */
mc_status mc_control_unpack_step(const uint8_t *buf, size_t len, mc_step_plan *out, mc_err *err);

/* "hello", "step", "result", "heartbeat", "shutdown", "error" or "none", for logs. */
const char *mc_control_body_name(const ControlMessage *msg);

#endif
