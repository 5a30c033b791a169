%% @doc Kademlia node ids and XOR distance, as pure functions.
%%
%% Existing Macula code computes ids, distances and bucket indexes through
%% this module, and the Rust engine must agree with it bit for bit: an id is
%% normalised to 32 bytes before any distance is taken (32 raw bytes as they
%% are, 64 hex characters decoded, anything else SHA-256 hashed).
%%
%% The math functions (`normalize/1', `distance/2', `leading_zeros/1',
%% `closer_to/3', `compare/3', `bucket_index/2', `to_hex/1') raise
%% `error:badarg' when given a non-binary. `from_binary/1' returns
%% `{error, invalid_size}' for any bad term. `from_hex/1', as the old module's,
%% returns the bare id and raises for bad input.
-module(macula_routing_nodeid).

-export([generate/0, from_binary/1, normalize/1, distance/2, leading_zeros/1,
         closer_to/3, compare/3, bucket_index/2, to_hex/1, from_hex/1]).

-export_type([node_id/0, distance/0]).

-define(ID_BYTES, 32).
-define(ID_BITS, 256).

%% Any binary names a node; distance is taken on its normalised 32 bytes.
-type node_id() :: binary().
-type distance() :: <<_:256>>.

%% @doc 32 strong random bytes.
-spec generate() -> <<_:256>>.
generate() ->
    crypto:strong_rand_bytes(?ID_BYTES).

%% @doc Accepts exactly 32 raw bytes; anything else is `{error, invalid_size}'.
-spec from_binary(term()) -> {ok, <<_:256>>} | {error, invalid_size}.
from_binary(<<_:?ID_BYTES/binary>> = Id) -> {ok, Id};
from_binary(_) -> {error, invalid_size}.

%% @doc The 32 bytes distance is computed on: 32 bytes as given, 64 hex chars
%% (either case) decoded, any other binary (including 64 non-hex chars)
%% SHA-256 hashed. Raises `badarg' for a non-binary.
-spec normalize(node_id()) -> <<_:256>>.
normalize(<<_:?ID_BYTES/binary>> = Id) ->
    Id;
normalize(<<_:(2 * ?ID_BYTES)/binary>> = Hex) ->
    case decode_hex(Hex) of
        {ok, Id} -> Id;
        error -> crypto:hash(sha256, Hex)
    end;
normalize(Id) when is_binary(Id) ->
    crypto:hash(sha256, Id);
normalize(Id) ->
    erlang:error(badarg, [Id]).

%% @doc Bytewise XOR of the normalised ids; ordering two distances with
%% `<' compares them as big-endian unsigned numbers.
-spec distance(node_id(), node_id()) -> distance().
distance(A, B) ->
    crypto:exor(normalize(A), normalize(B)).

%% @doc Number of leading zero bits of a binary (a distance: 0..256; an
%% all-zero binary gives its bit size). Raises `badarg' for a non-binary.
-spec leading_zeros(binary()) -> non_neg_integer().
leading_zeros(Bin) when is_binary(Bin) ->
    leading_zeros(Bin, 0);
leading_zeros(Other) ->
    erlang:error(badarg, [Other]).

-spec leading_zeros(binary(), non_neg_integer()) -> non_neg_integer().
leading_zeros(<<0, Rest/binary>>, Acc) -> leading_zeros(Rest, Acc + 8);
leading_zeros(<<Byte, _/binary>>, Acc) -> Acc + byte_leading_zeros(Byte);
leading_zeros(<<>>, Acc) -> Acc.

%% Of a non-zero byte.
-spec byte_leading_zeros(1..255) -> 0..7.
byte_leading_zeros(Byte) when Byte >= 16#80 -> 0;
byte_leading_zeros(Byte) -> 1 + byte_leading_zeros(Byte bsl 1).

%% @doc `closer_to(Target, A, B)': true when A is strictly closer to Target
%% than B (the target comes first, as in a lookup sorting candidates).
-spec closer_to(Target :: node_id(), A :: node_id(), B :: node_id()) -> boolean().
closer_to(Target, A, B) ->
    compare(Target, A, B) =:= less.

%% @doc `compare(Target, A, B)': orders A and B by their distance to Target.
-spec compare(Target :: node_id(), A :: node_id(), B :: node_id()) ->
          less | equal | greater.
compare(Target, A, B) ->
    DistA = distance(Target, A),
    DistB = distance(Target, B),
    if
        DistA < DistB -> less;
        DistA > DistB -> greater;
        true -> equal
    end.

%% @doc Leading zero bits of the distance between two ids: 0 is the far half
%% of the id space, 255 the nearest bucket, 256 the same id.
-spec bucket_index(node_id(), node_id()) -> 0..256.
bucket_index(A, B) ->
    leading_zeros(distance(A, B)).

%% @doc Lowercase hex charlist of a binary as given (64 chars for a 32-byte id).
-spec to_hex(binary()) -> string().
to_hex(Bin) when is_binary(Bin) ->
    [hex_digit(Nibble) || <<Nibble:4>> <= Bin];
to_hex(Other) ->
    erlang:error(badarg, [Other]).

-spec hex_digit(0..15) -> $0..$9 | $a..$f.
hex_digit(N) when N < 10 -> $0 + N;
hex_digit(N) -> $a + N - 10.

%% @doc The 32 bytes of a 64-character hex id, either case (a charlist, as the
%% old module took it, or a binary), as a bare binary. As in the old module, a
%% charlist of another length (or any other term) raises `function_clause' and
%% a non-hex character raises `badarg'; a binary of another length raises
%% `function_clause' too.
-spec from_hex(string() | binary()) -> <<_:256>>.
from_hex(Hex) when length(Hex) =:= 2 * ?ID_BYTES ->
    binary:decode_hex(list_to_binary(Hex));
from_hex(<<_:(2 * ?ID_BYTES)/binary>> = Hex) ->
    binary:decode_hex(Hex).

-spec decode_hex(binary()) -> {ok, binary()} | error.
decode_hex(Hex) ->
    try
        {ok, binary:decode_hex(Hex)}
    catch
        error:badarg -> error
    end.
