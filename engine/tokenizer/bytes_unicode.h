// GPT-2's reversible byte <-> printable code point mapping (bytes_to_unicode in OpenAI's
// encoder.py and tokenizers' ByteLevel), and the <0xNN> byte-fallback token spelling.
// Thread-safety: stateless functions over constant tables, thread-safe.
#ifndef QUANTD_ENGINE_TOKENIZER_BYTES_UNICODE_H_
#define QUANTD_ENGINE_TOKENIZER_BYTES_UNICODE_H_

#include <string>
#include <string_view>

namespace quantd::model {

// UTF-8 of the code point byte `b` maps to ('!'..'~' and most of Latin-1 map to themselves,
// the rest to U+0100 onwards: space -> "Ġ", newline -> "Ċ").
const std::string& ByteToUnicode(unsigned char b);

// The byte a code point maps back to, or -1 if it is not in the mapping's image.
int UnicodeToByte(char32_t c);

// "<0x0A>" for 10: the spelling tokenizers uses for byte_fallback tokens.
std::string ByteTokenName(unsigned char b);

// The byte of a "<0xNN>" token as tokenizers' ByteFallback decoder reads it (6 characters,
// hex digits after "<0x"), or -1.
int ParseByteToken(std::string_view token);

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_TOKENIZER_BYTES_UNICODE_H_
