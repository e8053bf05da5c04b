"""Token strings and prompt strings of the official release (checkpoint contract: never change)."""

IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"
IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_UNCOND_TOKEN = "<img_uncond>"
QUAD_START_TOKEN, QUAD_END_TOKEN = "<quad>", "</quad>"
REF_START_TOKEN, REF_END_TOKEN = "<ref>", "</ref>"
BOX_START_TOKEN, BOX_END_TOKEN = "<box>", "</box>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
THINK_START_TOKEN, THINK_END_TOKEN = "<think>", "</think>"
IMAGE_PLACEHOLDER = "<image>"

# Row order of `special_token_embedding.weight` in the released checkpoint.
SPECIAL_TOKEN_LIST: tuple[str, ...] = (
    BOX_END_TOKEN,
    BOX_START_TOKEN,
    IMG_CONTEXT_TOKEN,
    IMG_END_TOKEN,
    IMG_START_TOKEN,
    QUAD_END_TOKEN,
    QUAD_START_TOKEN,
    REF_END_TOKEN,
    REF_START_TOKEN,
    IMG_UNCOND_TOKEN,
)

# System prompts of the `qwen2_5-chat-v3` template family (verbatim, including the odd "。：").
SYSTEM_TEXT = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
SYSTEM_IMGEN = SYSTEM_TEXT + (
    "请通过详细描述图像中物体和背景的颜色、形状、大小、纹理、数量、文字内容以及空间位置关系等来对图像进行全面描述："
)
SYSTEM_EDITING = SYSTEM_TEXT + (
    "请描述输入图像的关键特征（颜色、形状、大小、纹理、物体、背景等），然后解释用户的文本指令应该如何改变或修改图像，"
    "从而生成一个满足用户要求的新图像，并适当保持与原始输入的一致性。："
)
TEMPLATE_SYSTEM_PROMPTS: dict[str, str] = {
    "qwen2_5-chat-v3": SYSTEM_TEXT,
    "qwen2_5-chat-v3-imgen": SYSTEM_IMGEN,
    "qwen2_5-chat-v3-editing": SYSTEM_EDITING,
}

# Classifier-free-guidance drop prompts (user turn content).
UNCOND_PROMPT = "Here is a random image <img_uncond>:"
TEXT_DROPPED_PROMPT = "Generate an image based on reference images."

GENERATION_MODES = ("text", "image", "text_image")
