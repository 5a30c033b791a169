%% @doc Reads the `Config' map of `macula_routing_server:start_link/2'.
%%
%% Existing callers pass `#{k => 20, alpha => 3}'; every other setting has a default, unknown keys
%% are ignored (as before), and a known key with a bad value is refused with
%% `{error, {invalid_config, Key, Value}}' before any process starts. Defaults and ranges come from
%% the engine's settings table (`macula_dht_nif:settings/0'), the one the Rust node and its
%% command line read too; network mode narrows a few (`k' at most 64, as a reply carries at most
%% 64 nodes).
%%
%% Network mode is on when `listen' is given; the parsed config then holds
%% `network => #{listen, bootstrap, identity, lookup_timeout_ms, request_timeout_ms}', with
%% addresses as `<<"host:port">>' binaries and `identity' a path binary or `undefined' (a new key
%% per run). Without `listen', `network => undefined': the single-node server.
-module(macula_routing_config).

-export([parse/1, defaults/0, address/1]).

-export_type([config/0, network/0]).

-type config() :: #{k := pos_integer(),
                    alpha := pos_integer(),
                    replacements := non_neg_integer(),
                    max_keys := pos_integer(),
                    max_providers_per_key := pos_integer(),
                    max_record_bytes := pos_integer(),
                    max_key_bytes := pos_integer(),
                    default_ttl := pos_integer(),
                    max_ttl := pos_integer(),
                    max_records := pos_integer(),
                    max_bytes := pos_integer(),
                    read_cache := non_neg_integer(),
                    expire_interval_ms := pos_integer(),
                    network := undefined | network()}.
-type network() :: #{listen := binary(),
                     bootstrap := [binary()],
                     identity := binary() | undefined,
                     lookup_timeout_ms := pos_integer(),
                     request_timeout_ms := pos_integer(),
                     publisher_share_pct := pos_integer(),
                     peer_stores_per_s := pos_integer()}.
-type address() :: {inet:ip_address(), inet:port_number()} | string() | binary().
-type setting() :: macula_dht_nif:setting().
-type invalid() :: {error, {invalid_config, Key :: atom(), Value :: term()}}.
%% Reads one network setting: `{ok, Parsed}' or `error'.
-type reader() :: fun((term()) -> {ok, term()} | error).

-define(MAX_ADDRESS_BYTES, 255).
-define(MAX_PATH_BYTES, 4096).

%% @doc The value of every setting when none is given (a single-node server).
-spec defaults() -> config().
defaults() ->
    #{server := Server} = macula_dht_nif:settings(),
    (maps:from_list([{Key, Default} || {Key, Default, _, _} <- Server]))#{network => undefined}.

%% @doc The config map as the server runs with it, or the first setting refused.
-spec parse(term()) -> {ok, config()} | invalid().
parse(Config) when is_map(Config) ->
    #{server := Server, network := Network} = macula_dht_nif:settings(),
    case parse(Server, Config, #{}) of
        {ok, Parsed} -> network(Config, Parsed, Network);
        Error -> Error
    end;
parse(Config) ->
    {error, {invalid_config, config, Config}}.

%% Reads each `{Key, Default, Min, Max}' from `Config' into `Acc' (an absent key takes its
%% default), then checks the ttls against each other.
-spec parse([setting()], map(), #{atom() => integer()}) ->
          {ok, #{atom() => integer()}} | invalid().
parse([], _Config, Acc) ->
    check_ttls(Acc);
parse([{Key, Default, Min, Max} | Rest], Config, Acc) ->
    case maps:get(Key, Config, Default) of
        Value when is_integer(Value), Value >= Min, Value =< Max ->
            parse(Rest, Config, Acc#{Key => Value});
        Value ->
            {error, {invalid_config, Key, Value}}
    end.

%% In network mode: the addresses and identity, then the network's settings, whose values are
%% the ones parsed already where a setting is in both lists (checked again in the narrower range).
-spec network(map(), #{atom() => integer()}, [setting()]) -> {ok, config()} | invalid().
network(#{listen := Listen} = Config, Parsed, Settings) ->
    Bootstrap = maps:get(bootstrap, Config, []),
    Identity = maps:get(identity, Config, undefined),
    Checks = [{listen, Listen, fun address/1},
              {bootstrap, Bootstrap, fun addresses/1},
              {identity, Identity, fun path/1}],
    case check(Checks, #{}) of
        {ok, Network} ->
            case parse(Settings, maps:merge(Config, Parsed), #{}) of
                {ok, Checked} ->
                    Own = maps:without(maps:keys(Parsed), Checked),
                    {ok, Parsed#{network => maps:merge(Network, Own)}};
                Error ->
                    Error
            end;
        Error ->
            Error
    end;
network(_Config, Parsed, _Settings) ->
    {ok, Parsed#{network => undefined}}.

-spec check([{atom(), term(), reader()}], map()) -> {ok, map()} | invalid().
check([], Acc) ->
    {ok, Acc};
check([{Key, Value, Read} | Rest], Acc) ->
    case Read(Value) of
        {ok, Parsed} -> check(Rest, Acc#{Key => Parsed});
        error -> {error, {invalid_config, Key, Value}}
    end.

%% @doc An address as the network settings hold it: `<<"host:port">>' (`<<"[v6]:port">>' for
%% an IPv6 tuple), or `error'.
-spec address(address()) -> {ok, binary()} | error.
address({Ip, Port}) when is_integer(Port), Port >= 0, Port =< 65535 ->
    case inet:ntoa(Ip) of
        {error, _} -> error;
        Text when tuple_size(Ip) =:= 8 -> {ok, iolist_to_binary(["[", Text, "]:", integer_to_list(Port)])};
        Text -> {ok, iolist_to_binary([Text, ":", integer_to_list(Port)])}
    end;
address(Text) ->
    bounded_text(Text, ?MAX_ADDRESS_BYTES).

-spec addresses(term()) -> {ok, [binary()]} | error.
addresses(List) ->
    #{max_bootstrap := Max} = macula_dht_nif:settings(),
    addresses(List, Max).

-spec addresses(term(), pos_integer()) -> {ok, [binary()]} | error.
addresses(List, Max) when is_list(List), length(List) =< Max ->
    Parsed = [address(A) || A <- List],
    case lists:member(error, Parsed) of
        true -> error;
        false -> {ok, [A || {ok, A} <- Parsed]}
    end;
addresses(_List, _Max) ->
    error.

-spec path(term()) -> {ok, binary() | undefined} | error.
path(undefined) ->
    {ok, undefined};
path(Path) ->
    bounded_text(Path, ?MAX_PATH_BYTES).

%% A non-empty string or binary of at most `Max' bytes, as a binary.
-spec bounded_text(term(), pos_integer()) -> {ok, binary()} | error.
bounded_text(Text, Max) when is_list(Text); is_binary(Text) ->
    try unicode:characters_to_binary(Text) of
        Bin when is_binary(Bin), byte_size(Bin) > 0, byte_size(Bin) =< Max -> {ok, Bin};
        _ -> error
    catch error:_ -> error
    end;
bounded_text(_Text, _Max) ->
    error.

-spec check_ttls(#{atom() => integer()}) -> {ok, #{atom() => integer()}} | invalid().
check_ttls(#{default_ttl := Default, max_ttl := Max}) when Default > Max ->
    {error, {invalid_config, default_ttl, Default}};
check_ttls(Config) ->
    {ok, Config}.
