/* config_deepseek_v4.h - DeepSeek-V4 specific fields of mc_model_desc. */
#ifndef MC_CONFIG_DEEPSEEK_V4_H
#define MC_CONFIG_DEEPSEEK_V4_H

typedef struct {
    int hc_mult; /* hyper-connection streams; 0 when the model is not V4 */
} mc_v4_desc;

#endif
