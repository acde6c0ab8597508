"""Demo peers that let Gatez run offline: `openai_upstream` plays OpenAI's Chat Completions API;
`replay` plays Anthropic, Gemini, Ollama and Bedrock by replaying the recordings in
`recordings/<provider>/`.

Import from the submodules (`from tests.fakes.openai_upstream import UpstreamServer`). Nothing is
re-exported here on purpose: importing the submodule from this package would make
`python -m tests.fakes.openai_upstream` warn that the module was already imported.
"""
