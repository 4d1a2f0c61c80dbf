"""The teacher's provider adapters, a plain dict by the name used in ``<provider>:<model>``.

openai     chat completions (``openai`` SDK)
anthropic  messages (``anthropic`` SDK)
google     generate_content (``google-genai`` SDK)
platform   the deployment's own OpenAI-compatible endpoint (vLLM, llama.cpp's server):
           the openai adapter pointed at DISTILLERY_PLATFORM_BASE_URL
"""
